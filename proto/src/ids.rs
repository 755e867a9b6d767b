//! Validation of the ids that cross the wire, so every crate refuses the
//! same things.

/// Longest user, device or group id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;

/// A user, device or group id: 1 to 64 bytes of `[A-Za-z0-9._@-]`.
///
/// Restricting the alphabet keeps ids safe as store keys, Redis keys and log
/// fields without escaping.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// A client message id: 1 to 64 printable ASCII bytes.
pub fn is_valid_client_msg_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_MSG_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("alice"));
        assert!(is_valid_id("a.b_c@d-1"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("al ice"));
        assert!(!is_valid_id("a\0b"));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(is_valid_client_msg_id("0f3a-17"));
        assert!(!is_valid_client_msg_id("a b"));
    }
}
