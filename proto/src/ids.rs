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

/// Hex digits of a time-ordered id's clock part.
const TIME_DIGITS: usize = 12;

/// Hex digits of a time-ordered id's random part.
const RANDOM_DIGITS: usize = 20;

/// A time-ordered client message id, as the SDK makes them: the client's
/// clock (milliseconds since the Unix epoch, 12 hex digits), `-`, and 80
/// random bits (20 hex digits): `0193a1b2c3d4-0123456789abcdef0123`.
///
/// Any id of [`is_valid_client_msg_id`] works. A store keeps the sends of
/// one sender with ids of this form next to each other, in time order,
/// which makes finding and adding its send records cheaper
/// ([`client_msg_id_time`]).
pub fn time_ordered_client_msg_id(now_ms: u64, random: u128) -> String {
    format!(
        "{:012x}-{:020x}",
        now_ms & ((1 << (4 * TIME_DIGITS)) - 1),
        random & ((1 << (4 * RANDOM_DIGITS)) - 1)
    )
}

/// The clock part of a [`time_ordered_client_msg_id`], in milliseconds;
/// `None` for an id of any other form.
///
/// The time is the client's word, so it orders that client's sends and
/// nothing else: it is never taken as when a message was sent.
pub fn client_msg_id_time(id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    if bytes.len() != TIME_DIGITS + 1 + RANDOM_DIGITS || bytes[TIME_DIGITS] != b'-' {
        return None;
    }
    let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if !bytes[..TIME_DIGITS].iter().all(lower_hex)
        || !bytes[TIME_DIGITS + 1..].iter().all(lower_hex)
    {
        return None;
    }
    u64::from_str_radix(&id[..TIME_DIGITS], 16).ok()
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

    /// A time-ordered id is a valid client id, gives its time back, and
    /// sorts with it; ids of other forms give none.
    #[test]
    fn time_ordered_ids() {
        let id = time_ordered_client_msg_id(1_764_770_000_000, u128::MAX);
        assert_eq!(id, "019ae47d2c80-ffffffffffffffffffff");
        assert!(is_valid_client_msg_id(&id));
        assert_eq!(client_msg_id_time(&id), Some(1_764_770_000_000));
        let later = time_ordered_client_msg_id(1_764_770_000_001, 0);
        assert!(later > id);
        for other in [
            "",
            "7",
            // What the SDK made before: 128 random bits as hex.
            "0123456789abcdef0123456789abcdef",
            "019ae47d2c80_ffffffffffffffffffff",
            "019ADED0FE80-ffffffffffffffffffff",
            "019ae47d2c80-fffffffffffffffffff",
            "019ae47d2c80-fffffffffffffffffffg",
            "+19aded0fe80-ffffffffffffffffffff",
        ] {
            assert_eq!(client_msg_id_time(other), None, "{other}");
        }
    }
}
