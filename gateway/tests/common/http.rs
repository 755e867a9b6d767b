//! Plain HTTP/1.1 requests to the admin and route endpoints.

/// GET `path` on an HTTP address (admin or route endpoint): (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = http_request(addr, "GET", path, None).await;
    (response.status, response.body)
}

/// An HTTP answer as a test reads it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// The header lines, lower-cased names: `name: value`.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `method path` on an HTTP address, with `Authorization: Bearer <key>`
/// when `key` is given, from 127.0.0.1.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> HttpResponse {
    http_request_from([127, 0, 0, 1].into(), addr, method, path, key).await
}

/// [`http_request`] from the local address `from` (any of 127.0.0.0/8 on
/// loopback), so a test can be two remote addresses.
pub async fn http_request_from(
    from: std::net::IpAddr,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> HttpResponse {
    http_exchange(from, addr, method, path, key, None).await
}

/// `method path` with a JSON `body` (`Content-Type: application/json`),
/// with `Authorization: Bearer <key>` when `key` is given, from 127.0.0.1.
pub async fn http_json(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> HttpResponse {
    http_exchange([127, 0, 0, 1].into(), addr, method, path, key, Some(body)).await
}

/// One HTTP/1.1 request and its whole answer.
async fn http_exchange(
    from: std::net::IpAddr,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    json: Option<&str>,
) -> HttpResponse {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().expect("tcp socket");
    socket
        .bind(std::net::SocketAddr::new(from, 0))
        .expect("bind the client address");
    let mut stream = socket.connect(addr).await.expect("http connect");
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let (content_type, body) = match json {
        Some(body) => ("Content-Type: application/json\r\n", body),
        None => ("", ""),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or((response.clone(), String::new()));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    HttpResponse { status, head, body }
}
