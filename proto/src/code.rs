//! Error codes on the wire: the one place where [`ErrorCode`] meets QUIC
//! application close and stream reset codes.

use crate::v1::ErrorCode;

impl ErrorCode {
    /// The code as a QUIC application error code (close or reset).
    pub fn to_quic(self) -> u32 {
        self as i32 as u32
    }

    /// The code carried by a QUIC close or reset, or `ErrorCode::Unspecified`
    /// for numbers this version does not know.
    pub fn from_quic(code: u64) -> ErrorCode {
        i32::try_from(code)
            .ok()
            .and_then(|c| ErrorCode::try_from(c).ok())
            .unwrap_or(ErrorCode::Unspecified)
    }

    /// Whether a request refused with this code may succeed if sent again
    /// unchanged (after a delay or on another connection).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::StoreUnavailable
                | ErrorCode::RateLimited
                | ErrorCode::ShuttingDown
                | ErrorCode::ServerBusy
                | ErrorCode::Internal
                | ErrorCode::HeartbeatTimeout
                | ErrorCode::LoginTimeout
                | ErrorCode::StoreFull
                | ErrorCode::OrderHeld
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_codes_round_trip() {
        for code in [
            ErrorCode::BadToken,
            ErrorCode::FrameTooLarge,
            ErrorCode::UnknownStreamKind,
            ErrorCode::Internal,
        ] {
            assert_eq!(ErrorCode::from_quic(u64::from(code.to_quic())), code);
        }
        assert_eq!(ErrorCode::from_quic(1 << 40), ErrorCode::Unspecified);
    }
}
