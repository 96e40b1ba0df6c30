//! Responses: read by a client exactly as strictly as update_engine read them (updates.md
//! §4.3: what is required, what is ignored, which error each gap is), and written by a
//! server in CoreUpdate's shape (§4.4).

use std::fmt::Write as _;

use crate::xml::{self, escape, Element};
use crate::Error;

/// The package of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The file name, appended to each URL (`update.gz`).
    pub name: String,
    /// Its size, bytes (more than 0).
    pub size: u64,
    /// Its SHA-1, base64 (`hash`; written for servers' sake, ignored by clients).
    pub sha1_base64: String,
}

/// An update offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The URLs to try in order, each ending in `/`.
    pub urls: Vec<String>,
    /// The manifest's version (informational for the client).
    pub version: String,
    /// The payload.
    pub package: Package,
    /// The payload's SHA-256, base64 (the postinstall action's `sha256`).
    pub sha256_base64: String,
    /// `DisablePayloadBackoff`.
    pub disable_payload_backoff: bool,
}

impl Offer {
    /// The payload's URLs: each codebase with the package name appended.
    pub fn payload_urls(&self) -> Vec<String> {
        self.urls
            .iter()
            .map(|u| format!("{u}{}", self.package.name))
            .collect()
    }
}

/// The answer to an update check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateCheck {
    /// No update.
    NoUpdate,
    /// An update.
    Update(Offer),
}

/// What a client takes from a response to an update check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResponse {
    /// `PollInterval`, seconds, when the server set one.
    pub poll_interval: Option<u64>,
    /// The answer.
    pub check: UpdateCheck,
}

impl CheckResponse {
    /// Reads the response to an update check with update_engine's rules: the first
    /// `/response/app/updatecheck` (required, with a `status`); `noupdate` is an answer,
    /// `ok` needs a manifest, at least one non-empty URL, a package with a name and a size
    /// above 0, and a postinstall action with a `sha256`; anything else is
    /// [`Error::Invalid`] (error 34). Everything else in the document is ignored.
    pub fn parse(text: &str) -> Result<CheckResponse, Error> {
        let root = xml::parse(text)?;
        if root.name != "response" {
            return Err(Error::Invalid(format!(
                "the root element is <{}>, not <response>",
                root.name
            )));
        }
        let check = root
            .all("app")
            .find_map(|a| a.child("updatecheck"))
            .ok_or_else(|| Error::Invalid("no /response/app/updatecheck".into()))?;
        let poll_interval = check
            .attr("PollInterval")
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| Error::Invalid(format!("PollInterval {v:?} is not a number")))
            })
            .transpose()?;
        let status = check
            .attr("status")
            .ok_or_else(|| Error::Invalid("updatecheck has no status".into()))?;
        let check = match status {
            "noupdate" => UpdateCheck::NoUpdate,
            "ok" => UpdateCheck::Update(offer(check)?),
            other => return Err(Error::Invalid(format!("updatecheck status {other:?}"))),
        };
        Ok(CheckResponse {
            poll_interval,
            check,
        })
    }
}

fn offer(check: &Element) -> Result<Offer, Error> {
    let missing = |what: &str| Error::Invalid(format!("an offer without {what}"));
    let manifest = check
        .child("manifest")
        .ok_or_else(|| missing("a manifest"))?;
    let urls: Vec<String> = check
        .child("urls")
        .into_iter()
        .flat_map(|u| u.all("url"))
        .map(|u| u.attr("codebase").unwrap_or("").to_string())
        .collect();
    if urls.is_empty() {
        return Err(missing("a URL"));
    }
    if urls.iter().any(|u| u.trim().is_empty()) {
        return Err(Error::Invalid("an empty URL codebase".into()));
    }
    let package = manifest
        .child("packages")
        .and_then(|p| p.child("package"))
        .ok_or_else(|| missing("a package"))?;
    let name = package
        .attr("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| missing("a package name"))?;
    let size = package
        .attr("size")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| missing("a package size above 0"))?;
    let action = manifest
        .child("actions")
        .into_iter()
        .flat_map(|a| a.all("action"))
        .find(|a| a.attr("event") == Some("postinstall"))
        .ok_or_else(|| missing("a postinstall action"))?;
    let sha256 = action
        .attr("sha256")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("the payload's sha256"))?;
    Ok(Offer {
        urls,
        version: manifest.attr("version").unwrap_or("").to_string(),
        package: Package {
            name: name.to_string(),
            size,
            sha1_base64: package.attr("hash").unwrap_or("").to_string(),
        },
        sha256_base64: sha256.to_string(),
        disable_payload_backoff: action.attr("DisablePayloadBackoff") == Some("true"),
    })
}

/// What a server answers for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAnswer {
    /// The app is not known: `status="error-unknownApplication"`.
    Unknown,
    /// An answer for an app the server serves.
    Ok {
        /// The answer to its update check, if it asked.
        check: Option<UpdateCheck>,
        /// `PollInterval` to send with it.
        poll_interval: Option<u64>,
        /// How many events it sent (each gets `<event status="ok">`).
        events: usize,
        /// Whether it pinged.
        ping: bool,
    },
}

/// A server's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `server`.
    pub server: String,
    /// (appid, answer) per app of the request, in its order.
    pub apps: Vec<(String, AppAnswer)>,
}

impl Response {
    /// The response in CoreUpdate's shape.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<response protocol=\"3.0\" server=\"{}\">",
            escape(&self.server)
        );
        out.push_str(" <daystart elapsed_seconds=\"0\"></daystart>\n");
        for (appid, answer) in &self.apps {
            let appid = escape(appid);
            let (check, poll_interval, events, ping) = match answer {
                AppAnswer::Unknown => {
                    let _ = writeln!(
                        out,
                        " <app appid=\"{appid}\" status=\"error-unknownApplication\"></app>"
                    );
                    continue;
                }
                AppAnswer::Ok {
                    check,
                    poll_interval,
                    events,
                    ping,
                } => (check, poll_interval, *events, *ping),
            };
            let _ = writeln!(out, " <app appid=\"{appid}\" status=\"ok\">");
            if ping {
                out.push_str("  <ping status=\"ok\"></ping>\n");
            }
            for _ in 0..events {
                out.push_str("  <event status=\"ok\"></event>\n");
            }
            let poll = poll_interval
                .map(|p| format!(" PollInterval=\"{p}\""))
                .unwrap_or_default();
            match check {
                None => {}
                Some(UpdateCheck::NoUpdate) => {
                    let _ = writeln!(
                        out,
                        "  <updatecheck status=\"noupdate\"{poll}></updatecheck>"
                    );
                }
                Some(UpdateCheck::Update(o)) => write_offer(&mut out, o, &poll),
            }
            out.push_str(" </app>\n");
        }
        out.push_str("</response>\n");
        out
    }
}

fn write_offer(out: &mut String, o: &Offer, poll: &str) {
    let _ = writeln!(out, "  <updatecheck status=\"ok\"{poll}>");
    out.push_str("   <urls>\n");
    for u in &o.urls {
        let _ = writeln!(out, "    <url codebase=\"{}\"></url>", escape(u));
    }
    out.push_str("   </urls>\n");
    let _ = writeln!(out, "   <manifest version=\"{}\">", escape(&o.version));
    out.push_str("    <packages>\n");
    let _ = writeln!(
        out,
        "     <package hash=\"{}\" name=\"{}\" size=\"{}\" required=\"false\"></package>",
        escape(&o.package.sha1_base64),
        escape(&o.package.name),
        o.package.size
    );
    out.push_str("    </packages>\n    <actions>\n");
    let _ = writeln!(
        out,
        "     <action event=\"postinstall\" sha256=\"{}\" needsadmin=\"false\" IsDelta=\"false\" DisablePayloadBackoff=\"{}\"></action>",
        escape(&o.sha256_base64),
        o.disable_payload_backoff
    );
    out.push_str("    </actions>\n   </manifest>\n  </updatecheck>\n");
}
