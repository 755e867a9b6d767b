//! Contacts in the client: friend requests (with a message), friends,
//! blocks. Requests and answers from others arrive as
//! [`Event::FriendRequest`](crate::Event::FriendRequest) and
//! [`Event::FriendResponse`](crate::Event::FriendResponse).

use qim_proto::v1::{self, contact_request, rpc_request, rpc_response};

use crate::Error;
use crate::client::Client;
use crate::rpc::unexpected;

/// A friend request waiting for an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct FriendRequest {
    /// Who asked.
    pub user: String,
    /// Their message.
    pub message: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// This user's contacts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct Contacts {
    /// Friends.
    pub friends: Vec<String>,
    /// Users this user blocked.
    pub blocked: Vec<String>,
    /// Requests to this user.
    pub incoming: Vec<FriendRequest>,
    /// Requests by this user, unanswered.
    pub outgoing: Vec<String>,
}

impl Client {
    async fn contact(&self, op: contact_request::Op) -> Result<Contacts, Error> {
        match self
            .rpc(rpc_request::Kind::Contacts(v1::ContactRequest {
                op: Some(op),
            }))
            .await?
        {
            rpc_response::Kind::Contacts(c) => Ok(Contacts {
                friends: c.friends,
                blocked: c.blocked,
                incoming: c
                    .incoming
                    .into_iter()
                    .map(|r| FriendRequest {
                        user: r.user,
                        message: r.message,
                        at_ms: r.at_ms,
                    })
                    .collect(),
                outgoing: c.outgoing,
            }),
            _ => Err(unexpected()),
        }
    }

    /// This user's contacts.
    pub async fn contacts(&self) -> Result<Contacts, Error> {
        self.contact(contact_request::Op::List(true)).await
    }

    /// Asks `user` to be friends (accepts theirs if they asked first).
    pub async fn request_friend(&self, user: String, message: String) -> Result<Contacts, Error> {
        self.contact(contact_request::Op::Request(
            contact_request::FriendRequest { user, message },
        ))
        .await
    }

    /// Accepts `user`'s request.
    pub async fn accept_friend(&self, user: String) -> Result<Contacts, Error> {
        self.contact(contact_request::Op::Accept(user)).await
    }

    /// Rejects `user`'s request.
    pub async fn reject_friend(&self, user: String) -> Result<Contacts, Error> {
        self.contact(contact_request::Op::Reject(user)).await
    }

    /// Ends the friendship with `user`.
    pub async fn remove_friend(&self, user: String) -> Result<Contacts, Error> {
        self.contact(contact_request::Op::Remove(user)).await
    }

    /// Blocks `user`: their messages to this user are refused (`BLOCKED`).
    pub async fn block(&self, user: String) -> Result<Contacts, Error> {
        self.contact(contact_request::Op::Block(user)).await
    }

    /// Unblocks `user`.
    pub async fn unblock(&self, user: String) -> Result<Contacts, Error> {
        self.contact(contact_request::Op::Unblock(user)).await
    }
}
