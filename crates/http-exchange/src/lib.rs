//! One HTTP/1.1 request and its whole reply, over any async stream.
//!
//! fleetctl speaks to fleetd's API over a unix socket, TCP or an SSH tunnel's pipes, and
//! fleetd asks an etcd v2 proxy for its members over TCP: each is one request on a fresh
//! connection. [`exchange`] does that on any stream with hyper's HTTP/1 client connection;
//! [`get_tcp`] adds the TCP connect, a `Host` header and a time limit.
//!
//! Invariant: nothing here retries or follows redirects; every call makes one request and
//! drops its connection when the reply is read (or the time is up).

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

/// A request body.
pub type Body = Full<Bytes>;

/// Where an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Connecting (TCP), with the OS error.
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    /// The request could not be built (a bad method or path).
    #[error("building the request: {0}")]
    Build(#[source] hyper::http::Error),
    /// hyper failed at a stage: `handshake`, `request` or `reply`.
    #[error("{0}: {1}")]
    Http(&'static str, #[source] hyper::Error),
    /// Connected, but no whole reply within the time limit.
    #[error("no answer in time")]
    TimedOut,
}

/// One request on a fresh HTTP/1.1 connection over `io`: the reply's status and body, or
/// the stage that failed (`handshake`, `request`, `reply`) and hyper's error. The
/// connection is dropped when the reply is read.
pub async fn exchange<I>(
    io: I,
    req: Request<Body>,
) -> Result<(StatusCode, Bytes), (&'static str, hyper::Error)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let resp = exchange_response(io, req).await?;
    let status = resp.status();
    Ok((status, resp.into_body()))
}

/// [`exchange`], keeping the whole reply: status, headers and body.
pub async fn exchange_response<I>(
    io: I,
    req: Request<Body>,
) -> Result<Response<Bytes>, (&'static str, hyper::Error)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ("handshake", e))?;
    let driver = tokio::spawn(conn);
    let reply = async {
        let resp = sender.send_request(req).await.map_err(|e| ("request", e))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| ("reply", e))?.to_bytes();
        Ok(Response::from_parts(parts, body))
    };
    let result = reply.await;
    driver.abort();
    result
}

/// How long a TCP connection may take (at most; a shorter `timeout` wins).
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// `method path` with `body` to `host:port` over TCP, the whole exchange within `timeout`.
pub async fn request_tcp(
    host: &str,
    method: &str,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), Failure> {
    let resp = request_tcp_response(host, method, path, body, timeout).await?;
    let status = resp.status();
    Ok((status, resp.into_body()))
}

/// [`request_tcp`], keeping the whole reply: status, headers and body.
pub async fn request_tcp_response(
    host: &str,
    method: &str,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Response<Bytes>, Failure> {
    let exchange = async {
        // A connection not made in time is a failure to connect, not a slow answer: a
        // caller waiting on a long poll tells the two apart.
        let connect = tokio::net::TcpStream::connect(host);
        let tcp = tokio::time::timeout(timeout.min(CONNECT_LIMIT), connect)
            .await
            .map_err(|_| {
                Failure::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no connection in time",
                ))
            })?
            .map_err(Failure::Connect)?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .body(Full::new(body))
            .map_err(Failure::Build)?;
        exchange_response(hyper_util::rt::TokioIo::new(tcp), req)
            .await
            .map_err(|(stage, e)| Failure::Http(stage, e))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Failure::TimedOut)?
}

/// `GET path` from `host:port` over TCP within `timeout`.
pub async fn get_tcp(
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), Failure> {
    request_tcp(host, "GET", path, Bytes::new(), timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server that answers one connection with `reply` after reading the request head.
    async fn one_reply(reply: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply).await.unwrap();
            s.shutdown().await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn reads_status_and_body() {
        let addr = one_reply(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello").await;
        let (status, body) = get_tcp(&addr, "/x", Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(&body[..], b"hello");
    }

    #[tokio::test]
    async fn a_reply_cut_short_is_a_reply_failure() {
        let addr = one_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhel").await;
        let e = get_tcp(&addr, "/x", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, Failure::Http("reply", _)), "{e}");
    }

    #[tokio::test]
    async fn garbage_is_an_http_failure() {
        let addr = one_reply(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let e = get_tcp(&addr, "/x", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, Failure::Http(..)), "{e}");
    }

    #[tokio::test]
    async fn silence_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let e = get_tcp(&addr, "/x", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, Failure::TimedOut), "{e}");
        drop(listener);
    }

    #[tokio::test]
    async fn refused_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = get_tcp(&addr, "/x", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, Failure::Connect(_)), "{e}");
    }
}
