//! A small HTTP/1.1 server on loopback for the tests: each request is handed to the test's
//! handler and recorded; one connection a request (`Connection: close`), at most 256.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub body: String,
}

/// The answer: status, extra header lines, body, and the length to declare (to cut a
/// transfer short, declare more than is sent).
pub struct Reply {
    pub status: &'static str,
    pub headers: String,
    pub body: Vec<u8>,
    pub declared: usize,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        let body = body.into();
        Reply {
            status: "200 OK",
            headers: String::new(),
            declared: body.len(),
            body,
        }
    }

    pub fn status(status: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            ..Reply::ok(body)
        }
    }
}

pub type Handler = Box<dyn FnMut(&Hit) -> Reply + Send>;

pub struct Server {
    pub base: String,
    pub seen: Arc<Mutex<Vec<Hit>>>,
}

pub fn serve(mut handler: Handler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(256) {
            let Ok(mut stream) = stream else { continue };
            let Some(hit) = read_request(&stream) else {
                continue;
            };
            let reply = handler(&hit);
            log.lock().unwrap().push(hit);
            let _ = write!(
                stream,
                "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
                reply.status, reply.declared, reply.headers
            );
            let _ = stream.write_all(&reply.body);
        }
    });
    Server {
        base: format!("http://{addr}"),
        seen,
    }
}

fn read_request(stream: &std::net::TcpStream) -> Option<Hit> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let (mut range, mut length) = (None, 0usize);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(": ").unwrap_or((h, ""));
        match k.to_ascii_lowercase().as_str() {
            "range" => range = Some(v.to_string()),
            "content-length" => length = v.parse().ok()?,
            _ => {}
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some(Hit {
        method,
        path,
        range,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
