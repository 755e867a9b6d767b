//! Stream preambles from arbitrary bytes: refused with a typed error or
//! accepted as a kind that encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qim_proto::preamble;

fuzz_target!(|data: &[u8]| {
    let Ok(bytes) = <[u8; preamble::LEN]>::try_from(data) else { return };
    match preamble::decode(bytes) {
        Ok(kind) => assert_eq!(preamble::encode(kind), bytes),
        Err(e) => {
            let _ = e.code();
        }
    }
});
