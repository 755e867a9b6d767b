//! Socket options of the TCP connections under [`mux`](super::mux), the
//! same on the gateway and in the SDK.

use tokio::net::TcpStream;

/// Unsent bytes the kernel may hold in a TCP socket's send buffer
/// (`TCP_NOTSENT_LOWAT`): the socket takes more only when fewer than this
/// wait. Bytes handed to the socket can no longer be reordered by the
/// write scheduler, so a chat frame written while a file goes out waits
/// behind at most this much in the kernel instead of up to the whole send
/// buffer (megabytes once the kernel has grown it). Bytes sent and not yet
/// acknowledged are not counted, so the congestion window still fills.
pub const NOTSENT_LOWAT: u32 = 16 * 1024;

/// Sets a new TCP connection up for the multiplexer: no Nagle delay
/// (frames are small and latency-bound) and, on Linux and Android,
/// [`NOTSENT_LOWAT`] (socket2 sets it there only). Failures are ignored:
/// both are optimisations and the connection works without them.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn sets_nodelay_and_notsent_lowat_on_both_ends() {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client = client.expect("connect");
        let (server, _) = accepted.expect("accept");
        for stream in [&client, &server] {
            super::tune(stream);
            assert!(stream.nodelay().expect("nodelay"));
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert_eq!(
                socket2::SockRef::from(stream)
                    .tcp_notsent_lowat()
                    .expect("TCP_NOTSENT_LOWAT"),
                super::NOTSENT_LOWAT
            );
        }
    }
}
