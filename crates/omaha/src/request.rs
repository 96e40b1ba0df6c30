//! Requests: written exactly as update_engine wrote them (attribute order, indentation, the
//! space before `>` of `<app>`; updates.md §4.1), and read by a server from any client.

use std::fmt::Write as _;

use crate::codes::{EventResult, EventType};
use crate::xml::{self, escape, Element};
use crate::Error;

/// Why the client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallSource {
    /// The periodic check.
    Scheduler,
    /// A check a user asked for (`update_engine_client -check_for_update`).
    OnDemand,
}

impl InstallSource {
    /// The attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            InstallSource::Scheduler => "scheduler",
            InstallSource::OnDemand => "ondemandupdate",
        }
    }
}

/// The `<os>` element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Os {
    /// `version` (CoreOS sent `Chateau`).
    pub version: String,
    /// `platform` (`CoreOS`).
    pub platform: String,
    /// `sp`: `<release version>_<machine>`, e.g. `766.4.0_x86_64`.
    pub sp: String,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `eventtype`.
    pub kind: EventType,
    /// `eventresult`.
    pub result: EventResult,
    /// `errorcode` (written only when the result is not success).
    pub error_code: Option<u32>,
    /// `previousversion` (the 3/2 event inside an update check carries it, maybe empty).
    pub previous_version: Option<String>,
}

impl Event {
    /// An event without an error code or previous version.
    pub fn new(kind: EventType, result: EventResult) -> Self {
        Self {
            kind,
            result,
            error_code: None,
            previous_version: None,
        }
    }
}

/// One `<app>`: who asks, and what for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct App {
    /// `appid`, e.g. `{e96281a6-d1af-4bde-9a0a-97b76e56dc57}`.
    pub appid: String,
    /// The running version.
    pub version: String,
    /// `track`: the group or channel.
    pub track: String,
    /// `bootid`.
    pub bootid: String,
    /// `oem`.
    pub oem: String,
    /// `oemversion`.
    pub oem_version: String,
    /// `alephversion`: the version first installed.
    pub aleph_version: String,
    /// `machineid`.
    pub machine_id: String,
    /// `lang`.
    pub lang: String,
    /// `board`, e.g. `amd64-usr`.
    pub board: String,
    /// `<ping active="1">`.
    pub ping: bool,
    /// `<updatecheck>`.
    pub update_check: bool,
    /// The events, in order.
    pub events: Vec<Event>,
}

/// A whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `version` and `updaterversion`: the client's name and version.
    pub updater: String,
    /// `installsource`.
    pub install_source: InstallSource,
    /// `<os>`.
    pub os: Os,
    /// The apps (update_engine sends one).
    pub apps: Vec<App>,
}

impl Request {
    /// The request as update_engine wrote it.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let u = escape(&self.updater);
        let _ = writeln!(
            out,
            "<request protocol=\"3.0\" version=\"{u}\" updaterversion=\"{u}\" installsource=\"{}\" ismachine=\"1\">",
            self.install_source.as_str()
        );
        let _ = writeln!(
            out,
            "    <os version=\"{}\" platform=\"{}\" sp=\"{}\"></os>",
            escape(&self.os.version),
            escape(&self.os.platform),
            escape(&self.os.sp)
        );
        for app in &self.apps {
            let _ = writeln!(
                out,
                "    <app appid=\"{}\" version=\"{}\" track=\"{}\" bootid=\"{}\" oem=\"{}\" oemversion=\"{}\" alephversion=\"{}\" machineid=\"{}\" lang=\"{}\" board=\"{}\" hardware_class=\"\" delta_okay=\"false\" >",
                escape(&app.appid),
                escape(&app.version),
                escape(&app.track),
                escape(&app.bootid),
                escape(&app.oem),
                escape(&app.oem_version),
                escape(&app.aleph_version),
                escape(&app.machine_id),
                escape(&app.lang),
                escape(&app.board),
            );
            if app.ping {
                out.push_str("        <ping active=\"1\"></ping>\n");
            }
            if app.update_check {
                out.push_str("        <updatecheck></updatecheck>\n");
            }
            for e in &app.events {
                let _ = write!(
                    out,
                    "        <event eventtype=\"{}\" eventresult=\"{}\"",
                    e.kind.code(),
                    e.result.code()
                );
                if let (Some(code), false) = (e.error_code, e.result == EventResult::Success) {
                    let _ = write!(out, " errorcode=\"{code}\"");
                }
                if let Some(prev) = &e.previous_version {
                    let _ = write!(out, " previousversion=\"{}\"", escape(prev));
                }
                out.push_str("></event>\n");
            }
            out.push_str("    </app>\n");
        }
        out.push_str("</request>\n");
        out
    }

    /// Reads a request (a server's side): any attribute order, unknown attributes and
    /// elements ignored; `protocol="3.0"` and an `appid` on every app required.
    pub fn parse(text: &str) -> Result<Request, Error> {
        let root = xml::parse(text)?;
        if root.name != "request" {
            return Err(Error::Invalid(format!(
                "the root element is <{}>, not <request>",
                root.name
            )));
        }
        match root.attr("protocol") {
            Some("3.0") => {}
            other => return Err(Error::Protocol(other.unwrap_or("").to_string())),
        }
        let install_source = match root.attr("installsource") {
            Some("ondemandupdate") => InstallSource::OnDemand,
            _ => InstallSource::Scheduler,
        };
        let os = root
            .child("os")
            .map(|o| Os {
                version: attr(o, "version"),
                platform: attr(o, "platform"),
                sp: attr(o, "sp"),
            })
            .unwrap_or_default();
        let apps = root
            .all("app")
            .map(parse_app)
            .collect::<Result<Vec<_>, _>>()?;
        if apps.is_empty() {
            return Err(Error::Invalid("the request has no <app>".into()));
        }
        Ok(Request {
            updater: root
                .attr("updaterversion")
                .or_else(|| root.attr("version"))
                .unwrap_or("")
                .to_string(),
            install_source,
            os,
            apps,
        })
    }
}

fn attr(e: &Element, name: &str) -> String {
    e.attr(name).unwrap_or("").to_string()
}

fn number(e: &Element, name: &str) -> Result<Option<u32>, Error> {
    e.attr(name)
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| Error::Invalid(format!("<{}> {name}={v:?} is not a number", e.name)))
        })
        .transpose()
}

fn parse_app(e: &Element) -> Result<App, Error> {
    let appid = attr(e, "appid");
    if appid.trim().is_empty() {
        return Err(Error::Invalid("an <app> without an appid".into()));
    }
    let mut events = Vec::new();
    for ev in e.all("event") {
        let kind = number(ev, "eventtype")?
            .ok_or_else(|| Error::Invalid("an <event> without an eventtype".into()))?;
        let result = number(ev, "eventresult")?
            .ok_or_else(|| Error::Invalid("an <event> without an eventresult".into()))?;
        events.push(Event {
            kind: EventType::from_code(kind),
            result: EventResult::from_code(result),
            error_code: number(ev, "errorcode")?,
            previous_version: ev.attr("previousversion").map(str::to_string),
        });
    }
    Ok(App {
        appid,
        version: attr(e, "version"),
        track: attr(e, "track"),
        bootid: attr(e, "bootid"),
        oem: attr(e, "oem"),
        oem_version: attr(e, "oemversion"),
        aleph_version: attr(e, "alephversion"),
        machine_id: attr(e, "machineid"),
        lang: attr(e, "lang"),
        board: attr(e, "board"),
        ping: e.child("ping").is_some(),
        update_check: e.child("updatecheck").is_some(),
        events,
    })
}
