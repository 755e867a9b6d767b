//! The one rpc exchange: open an rpc stream on a connection, send one
//! request, read one response, and map a refusal to [`Error`]. Every
//! request of the client goes through [`exchange`]: the API's requests
//! (through `Client::rpc`, which waits for a connection and bounds the
//! time) and the receive path's gap and group-log pulls.

use qim_proto::io::{FramedRecv, FramedSend};
use qim_proto::preamble::StreamKind;
use qim_proto::v1::{self, ErrorCode, rpc_request, rpc_response};

use crate::Error;

/// Sends `request` on a new rpc stream of `conn` and returns the response;
/// a response that is a refusal becomes [`Error::from_code`].
pub(crate) async fn exchange(
    conn: &qim_proto::transport::Connection,
    max_frame: usize,
    request: rpc_request::Kind,
) -> Result<rpc_response::Kind, Error> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::from_connection(&e))?;
    let mut send = FramedSend::new(send, StreamKind::Rpc, max_frame);
    let mut recv = FramedRecv::new(recv, max_frame);
    send.send(&v1::RpcRequest {
        kind: Some(request),
    })
    .await?;
    send.finish();
    match recv.next::<v1::RpcResponse>().await?.and_then(|r| r.kind) {
        Some(rpc_response::Kind::Error(e)) => Err(Error::from_code(
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            e.message,
        )),
        Some(kind) => Ok(kind),
        None => Err(Error::Network("empty rpc response".into())),
    }
}

/// The error for a response of the wrong kind.
pub(crate) fn unexpected() -> Error {
    Error::Network("unexpected rpc response".into())
}
