//! Contacts through the bindings: friend requests with a message, answers,
//! the friend list and the block list.
//!
//! Every call returns the user's whole [`ContactList`] as it is afterwards.
//! Requests and answers from others arrive through
//! `ClientListener.on_message` as `MessageEvent.FriendRequest` and
//! `MessageEvent.FriendResponse`. A blocked user's messages are refused
//! with `Rejected` code `BLOCKED`; with a friends-only server policy,
//! messages between non-friends with `NOT_FRIENDS`.

use crate::{QimClient, QimError};

/// A friend request to this user, not answered yet.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct IncomingFriendRequest {
    /// Who asked.
    pub user: String,
    /// Their message.
    pub message: String,
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
}

impl From<qim_sdk::FriendRequest> for IncomingFriendRequest {
    fn from(r: qim_sdk::FriendRequest) -> Self {
        IncomingFriendRequest {
            user: r.user,
            message: r.message,
            at_ms: r.at_ms,
        }
    }
}

/// This user's contacts.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ContactList {
    /// Friends.
    pub friends: Vec<String>,
    /// Users this user blocked.
    pub blocked: Vec<String>,
    /// Requests to this user.
    pub incoming: Vec<IncomingFriendRequest>,
    /// Requests by this user, unanswered.
    pub outgoing: Vec<String>,
}

impl From<qim_sdk::Contacts> for ContactList {
    fn from(c: qim_sdk::Contacts) -> Self {
        ContactList {
            friends: c.friends,
            blocked: c.blocked,
            incoming: crate::list(c.incoming),
            outgoing: c.outgoing,
        }
    }
}

#[uniffi::export]
impl QimClient {
    /// This user's contacts.
    pub async fn contacts(&self) -> Result<ContactList, QimError> {
        self.call(|c| async move { c.contacts().await }).await
    }

    /// Asks `user` to be friends, with a message (accepts their request if
    /// they asked first).
    pub async fn request_friend(
        &self,
        user: String,
        message: String,
    ) -> Result<ContactList, QimError> {
        self.call(move |c| async move { c.request_friend(user, message).await })
            .await
    }

    /// Accepts `user`'s request.
    pub async fn accept_friend(&self, user: String) -> Result<ContactList, QimError> {
        self.call(move |c| async move { c.accept_friend(user).await })
            .await
    }

    /// Rejects `user`'s request.
    pub async fn reject_friend(&self, user: String) -> Result<ContactList, QimError> {
        self.call(move |c| async move { c.reject_friend(user).await })
            .await
    }

    /// Ends the friendship with `user`.
    pub async fn remove_friend(&self, user: String) -> Result<ContactList, QimError> {
        self.call(move |c| async move { c.remove_friend(user).await })
            .await
    }

    /// Blocks `user`: their messages to this user are refused (`BLOCKED`).
    pub async fn block(&self, user: String) -> Result<ContactList, QimError> {
        self.call(move |c| async move { c.block(user).await }).await
    }

    /// Unblocks `user`.
    pub async fn unblock(&self, user: String) -> Result<ContactList, QimError> {
        self.call(move |c| async move { c.unblock(user).await })
            .await
    }
}
