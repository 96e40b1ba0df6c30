//! The update service and payload downloads over HTTP(S) (`ureq`, rustls): CoreOS's
//! limits — 30 s to connect, 10 redirects, a download resumed with `Range` after a cut, up
//! to a bounded number of retries — and never more bytes than were offered.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use crate::attempt::{Download, Omaha};

fn agent(read_timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(read_timeout)
        .redirects(10)
        .build()
}

/// Omaha over HTTP: `POST` with `Content-Type: text/xml`.
#[derive(Debug)]
pub struct HttpOmaha {
    agent: ureq::Agent,
}

impl Default for HttpOmaha {
    fn default() -> Self {
        HttpOmaha {
            agent: agent(Duration::from_secs(60)),
        }
    }
}

fn read_body(r: ureq::Response, limit: usize) -> Result<String, String> {
    let mut body = String::new();
    r.into_reader()
        .take(limit as u64 + 1)
        .read_to_string(&mut body)
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok(body)
}

impl Omaha for HttpOmaha {
    fn post(&mut self, url: &str, body: &str) -> Result<(u16, String), String> {
        match self
            .agent
            .post(url)
            .set("Content-Type", "text/xml")
            .send_string(body)
        {
            Ok(r) => Ok((r.status(), read_body(r, omaha::MAX_DOCUMENT)?)),
            Err(ureq::Error::Status(code, r)) => {
                Ok((code, read_body(r, omaha::MAX_DOCUMENT).unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Payload downloads: resumed from what the file holds, retried after a cut.
#[derive(Debug)]
pub struct HttpDownload {
    agent: ureq::Agent,
    /// Retries after a failure (CoreOS: 20).
    pub retries: u32,
    /// The pause between them (CoreOS: 20 s).
    pub pause: Duration,
}

impl Default for HttpDownload {
    fn default() -> Self {
        HttpDownload {
            // CoreOS aborted a transfer slower than 10 B/s for 90 s.
            agent: agent(Duration::from_secs(90)),
            retries: 20,
            pause: Duration::from_secs(20),
        }
    }
}

impl HttpDownload {
    /// Downloads with `retries` retries `pause` apart.
    pub fn with_retries(retries: u32, pause: Duration) -> Self {
        HttpDownload {
            retries,
            pause,
            ..HttpDownload::default()
        }
    }

    /// One try: from what `dest` holds to `size` bytes.
    fn once(
        &self,
        url: &str,
        dest: &Path,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), String> {
        let have = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        if have > size {
            let _ = std::fs::remove_file(dest);
            return Err(format!("{} holds more than was offered", dest.display()));
        }
        if have == size {
            return Ok(());
        }
        let mut req = self.agent.get(url);
        if have > 0 {
            req = req.set("Range", &format!("bytes={have}-"));
        }
        let r = req.call().map_err(|e| e.to_string())?;
        // A server that ignores the range sends it all again.
        let (mut at, append) = match r.status() {
            206 => (have, true),
            _ => (0, false),
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(dest)
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        let mut body = r.into_reader().take(size - at + 1);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            at += n as u64;
            if at > size {
                drop(file);
                let _ = std::fs::remove_file(dest);
                return Err(format!("{url}: more than the {size} bytes offered"));
            }
            file.write_all(&buf[..n])
                .map_err(|e| format!("{}: {e}", dest.display()))?;
            progress(at);
        }
        file.sync_all()
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        if at < size {
            return Err(format!("{url}: the transfer ended at {at} of {size} bytes"));
        }
        Ok(())
    }
}

impl Download for HttpDownload {
    fn fetch(
        &mut self,
        url: &str,
        dest: &Path,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(self.pause);
            }
            match self.once(url, dest, size, progress) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(format!("{last} (after {} retries)", self.retries))
    }
}
