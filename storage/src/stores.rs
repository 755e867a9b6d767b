//! One bundle of every store trait, built from one backend instance.

use std::sync::Arc;

use crate::{
    ContactStore, ConversationStore, GroupStore, MessageStore, PresenceStore, ScheduleStore,
};

/// Every store the gateway uses, all from one backend instance.
#[derive(Clone)]
pub struct Stores {
    /// Inboxes, idempotency keys, cursors.
    pub messages: Arc<dyn MessageStore>,
    /// Conversations, read state, message operations.
    pub conversations: Arc<dyn ConversationStore>,
    /// Groups.
    pub groups: Arc<dyn GroupStore>,
    /// Friends and blocks.
    pub contacts: Arc<dyn ContactStore>,
    /// Scheduled sends.
    pub schedules: Arc<dyn ScheduleStore>,
    /// Session records.
    pub presence: Arc<dyn PresenceStore>,
}

impl Stores {
    /// The bundle of one backend that implements every trait.
    pub fn new<B>(backend: Arc<B>) -> Self
    where
        B: MessageStore
            + ConversationStore
            + GroupStore
            + ContactStore
            + ScheduleStore
            + PresenceStore
            + 'static,
    {
        Self {
            messages: backend.clone(),
            conversations: backend.clone(),
            groups: backend.clone(),
            contacts: backend.clone(),
            schedules: backend.clone(),
            presence: backend,
        }
    }
}
