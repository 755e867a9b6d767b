//! Contacts through the bindings: friend requests with a message, answers,
//! the friend list and the block list; and the user's quotas.
//!
//! Every call returns the user's whole [`Contacts`] as it is afterwards.
//! Requests and answers from others arrive through
//! `ClientListener.on_message` as `Event.FriendRequest` and
//! `Event.FriendResponse`. A blocked user's messages are refused
//! with `Rejected` code `BLOCKED`; with a friends-only server policy,
//! messages between non-friends with `NOT_FRIENDS`.

use qim_sdk::{Contacts, Quota};

use crate::{QimClient, QimError};

#[uniffi::export]
impl QimClient {
    /// This user's contacts.
    pub async fn contacts(&self) -> Result<Contacts, QimError> {
        self.call(|c| async move { c.contacts().await }).await
    }

    /// Asks `user` to be friends, with a message (accepts their request if
    /// they asked first).
    pub async fn request_friend(
        &self,
        user: String,
        message: String,
    ) -> Result<Contacts, QimError> {
        self.call(move |c| async move { c.request_friend(user, message).await })
            .await
    }

    /// Accepts `user`'s request.
    pub async fn accept_friend(&self, user: String) -> Result<Contacts, QimError> {
        self.call(move |c| async move { c.accept_friend(user).await })
            .await
    }

    /// Rejects `user`'s request.
    pub async fn reject_friend(&self, user: String) -> Result<Contacts, QimError> {
        self.call(move |c| async move { c.reject_friend(user).await })
            .await
    }

    /// Ends the friendship with `user`.
    pub async fn remove_friend(&self, user: String) -> Result<Contacts, QimError> {
        self.call(move |c| async move { c.remove_friend(user).await })
            .await
    }

    /// Blocks `user`: their messages to this user are refused (`BLOCKED`).
    pub async fn block(&self, user: String) -> Result<Contacts, QimError> {
        self.call(move |c| async move { c.block(user).await }).await
    }

    /// Unblocks `user`.
    pub async fn unblock(&self, user: String) -> Result<Contacts, QimError> {
        self.call(move |c| async move { c.unblock(user).await })
            .await
    }

    /// This user's quotas, each with its limit and usage (a send past one
    /// fails with `Rejected` code `RATE_LIMITED` or `QUOTA_EXCEEDED`).
    pub async fn quota(&self) -> Result<Vec<Quota>, QimError> {
        self.call(|c| async move { c.quota().await }).await
    }
}
