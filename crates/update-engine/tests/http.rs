//! The HTTP side against a server on loopback: Omaha answers (errors included) and a
//! payload download cut part-way and resumed with `Range`, never past what was offered.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::time::Duration;

use common::{serve, Reply};
use update_engine::attempt::{Download, Omaha};
use update_engine::http::{HttpDownload, HttpOmaha};

/// Serves `payload` at `/payload` (the first GET cut after `cut` bytes), `/big` (one byte
/// more than the payload), and answers POSTs to `/v1/update/` with 200, others with 503.
fn server(payload: Vec<u8>, cut: usize) -> common::Server {
    let mut gets = 0;
    serve(Box::new(move |hit| {
        match (hit.method.as_str(), hit.path.as_str()) {
            ("POST", "/v1/update/") => Reply::ok("<response/>"),
            ("POST", _) => Reply::status("503 Service Unavailable", "busy"),
            ("GET", "/big") => Reply::ok([payload.as_slice(), &[0]].concat()),
            ("GET", "/payload") => {
                gets += 1;
                let from = hit
                    .range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
                match from {
                    Some(from) => Reply {
                        status: "206 Partial Content",
                        headers: format!(
                            "Content-Range: bytes {from}-{}/{}\r\n",
                            payload.len() - 1,
                            payload.len()
                        ),
                        ..Reply::ok(payload[from..].to_vec())
                    },
                    // The first try is cut: the length promised, fewer bytes sent.
                    None if gets == 1 => Reply {
                        declared: payload.len(),
                        ..Reply::ok(payload[..cut].to_vec())
                    },
                    None => Reply::ok(payload.clone()),
                }
            }
            _ => Reply::status("404 Not Found", ""),
        }
    }))
}

#[test]
fn omaha_answers_and_errors_come_back_with_their_status() {
    let s = server(Vec::new(), 0);
    let mut o = HttpOmaha::default();
    assert_eq!(
        o.post(&format!("{}/v1/update/", s.base), "<request/>")
            .unwrap(),
        (200, "<response/>".into())
    );
    assert_eq!(
        o.post(&format!("{}/busy", s.base), "<request/>").unwrap(),
        (503, "busy".into())
    );
    assert!(
        o.post("http://127.0.0.1:1/v1/update/", "<request/>")
            .is_err(),
        "nothing listens there"
    );
    let seen = s.seen.lock().unwrap();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].body.as_str()),
        ("POST", "<request/>")
    );
}

#[test]
fn a_cut_download_resumes_where_it_stopped() {
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let s = server(payload.clone(), 300_000);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("payload");
    let mut d = HttpDownload::with_retries(3, Duration::from_millis(10));
    let mut last = 0;
    d.fetch(
        &format!("{}/payload", s.base),
        &dest,
        payload.len() as u64,
        &mut |n| last = n,
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    assert_eq!(last, payload.len() as u64);
    let seen = s.seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some("bytes=300000-"),
        "resumed from the cut"
    );
}

#[test]
fn more_than_offered_is_refused_and_not_kept() {
    let payload = vec![7u8; 50_000];
    let s = server(payload.clone(), 0);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("payload");
    let mut d = HttpDownload::with_retries(1, Duration::from_millis(10));
    let err = d
        .fetch(
            &format!("{}/big", s.base),
            &dest,
            payload.len() as u64,
            &mut |_| {},
        )
        .unwrap_err();
    assert!(err.contains("more than"), "{err}");
    assert!(!dest.exists());
    let err = d
        .fetch(&format!("{}/nothing", s.base), &dest, 10, &mut |_| {})
        .unwrap_err();
    assert!(
        err.contains("404") && err.contains("after 1 retries"),
        "{err}"
    );
}
