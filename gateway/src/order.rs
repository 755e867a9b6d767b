//! A sender's order on one chat stream: a send refused as retryable holds
//! the stream, so no later send of it is stored before that send is.
//!
//! The client resends a retryable refusal later; if the sends it wrote
//! after it were stored meanwhile, the resend would land after them. So
//! from the first retryable refusal on, every later send on the stream is
//! refused with `ORDER_HELD` (retryable, not stored, nothing charged) until
//! the held send is read again; from there the stream goes on in order.
//! A client that never sends it again only holds up its own stream.
//!
//! Why the gateway and not the store: the chat stream already stores one
//! batch at a time in the order read, so the stream is where "earlier" is
//! known for free; the store would need a per-sender sequence and another
//! lightweight transaction per message to check it. What the stream cannot
//! see (a first attempt whose write outlived the fill window, resent on
//! another connection) the cluster store refuses as `SEND_SUPERSEDED`
//! instead of storing it after the sender's later messages.

/// The hold of one chat stream.
#[derive(Debug, Default)]
pub(crate) struct OrderHold {
    /// The send refused as retryable that later sends wait for.
    held: Option<String>,
}

impl OrderHold {
    /// Whether the send `client_msg_id` may be stored now: not while an
    /// earlier send is held, except the held one itself, which ends the
    /// hold.
    pub(crate) fn admits(&mut self, client_msg_id: &str) -> bool {
        match &self.held {
            None => true,
            Some(held) if held == client_msg_id => {
                self.held = None;
                true
            }
            Some(_) => false,
        }
    }

    /// `client_msg_id`, admitted earlier in the batch, was refused as
    /// retryable: the rest of the batch and what follows wait for it.
    /// The earliest such send of a batch is the one held.
    pub(crate) fn hold(&mut self, client_msg_id: &str) {
        if self.held.is_none() {
            self.held = Some(client_msg_id.to_owned());
        }
    }

    /// The batch's earliest admitted send refused as retryable (found only
    /// once the store answered): it is the one held.
    pub(crate) fn hold_first(&mut self, client_msg_id: &str) {
        self.held = Some(client_msg_id.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sends_wait_for_the_held_one() {
        let mut hold = OrderHold::default();
        assert!(hold.admits("a"));
        hold.hold("a");
        hold.hold("b");
        assert!(!hold.admits("b"), "b waits for a");
        assert!(!hold.admits("c"));
        assert!(hold.admits("a"), "a itself goes, and ends the hold");
        assert!(hold.admits("b"));
        hold.hold("c");
        hold.hold_first("b");
        assert!(!hold.admits("c"), "the earliest refusal is the one held");
        assert!(hold.admits("b"));
    }
}
