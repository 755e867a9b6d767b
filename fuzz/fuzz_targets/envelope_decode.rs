//! Every message type a stream can carry, decoded from arbitrary bytes and,
//! when it decodes, re-encoded and decoded again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use qim_proto::v1;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(msg) = M::decode(data) {
        let again = M::decode(msg.encode_to_vec().as_slice()).expect("re-encoded message decodes");
        assert_eq!(msg, again);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<v1::ClientControl>(data);
    round_trip::<v1::ServerControl>(data);
    round_trip::<v1::Ping>(data);
    round_trip::<v1::Pong>(data);
    round_trip::<v1::Send>(data);
    round_trip::<v1::ServerAck>(data);
    round_trip::<v1::DeliveryAck>(data);
    round_trip::<v1::Deliver>(data);
    round_trip::<v1::RpcRequest>(data);
    round_trip::<v1::RpcResponse>(data);
});
