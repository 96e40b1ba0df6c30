//! The dashboard: plain HTML from the store, refreshed every 5 s, no script. `/dashboard`
//! shows the groups (channel, newest release, policy, pause and resume buttons), the
//! versions instances run, each recent release's rollout over time (an SVG step chart of
//! how many instances ran it, from their event history), and the instances with their
//! failures and rollbacks; `/dashboard/instances/<id>` is one instance's history. Every
//! value a client sent (machine IDs, versions) is escaped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::store::{EventRecord, Instance};
use crate::{Error, Service};

/// How many events the charts are drawn from.
const CHART_EVENTS: u32 = 200_000;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time.
pub fn utc(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// What an event means, in words.
pub fn describe(e: &EventRecord) -> String {
    let what = match (e.kind, e.result) {
        (13, 1) => "download started".to_string(),
        (14, 1) => "download finished".to_string(),
        (3, 1) => "update installed".to_string(),
        (3, 2) => format!("checked in, running {}", e.version),
        (3, 9) => "update declined".to_string(),
        (_, 0) if e.code == Some(44) => "rolled back".to_string(),
        (k, 0) => format!("failed (event {k})"),
        (k, r) => format!("event {k}, result {r}"),
    };
    match e.code {
        Some(c) if c != 0 => format!("{what} (error code {c})"),
        _ => what,
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}.bad{color:#b00}.ok{color:#070}code{font-size:.95em}form{display:inline}svg{border:1px solid #ccc;background:#fcfcfc}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\"><title>{}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        esc(title)
    ))
}

fn fail(e: &Error) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

/// How many instances ran `version` over time: step points (time, count), from each
/// instance's event history (every event carries the version it ran).
pub fn rollout(events: &[(String, EventRecord)], version: &str) -> Vec<(i64, usize)> {
    let mut running: HashMap<&str, &str> = HashMap::new();
    let mut points: Vec<(i64, usize)> = Vec::new();
    let mut count = 0;
    for (id, e) in events {
        let before = running.insert(id.as_str(), e.version.as_str());
        let was = before == Some(version);
        let is = e.version == version;
        if was == is {
            continue;
        }
        if was && !is {
            count -= 1;
        } else if is && !was {
            count += 1;
        }
        match points.last_mut() {
            Some(last) if last.0 == e.at => last.1 = count,
            _ => points.push((e.at, count)),
        }
    }
    points
}

/// The step chart of a rollout: instances running the release against time.
fn chart(points: &[(i64, usize)], total: usize, now: i64) -> String {
    let (w, h, pad) = (640.0_f64, 160.0_f64, 30.0_f64);
    let Some(&(start, _)) = points.first() else {
        return "<p>No instance has reported it yet.</p>".into();
    };
    let end = now.max(start + 1);
    let x = |t: i64| pad + (w - 2.0 * pad) * (t - start) as f64 / (end - start) as f64;
    let max = total.max(1) as f64;
    let y = |n: usize| h - pad - (h - 2.0 * pad) * n as f64 / max;
    let mut path = String::new();
    let mut last = 0;
    for (i, &(t, n)) in points.iter().enumerate() {
        if i == 0 {
            let _ = write!(path, "M{:.1},{:.1} ", x(t), y(0));
        }
        let _ = write!(
            path,
            "L{:.1},{:.1} L{:.1},{:.1} ",
            x(t),
            y(last),
            x(t),
            y(n)
        );
        last = n;
    }
    let _ = write!(path, "L{:.1},{:.1}", x(end), y(last));
    format!(
        "<svg class=\"rollout\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{last} of {total} instances\">\
<line x1=\"{pad}\" y1=\"{y0:.1}\" x2=\"{xe:.1}\" y2=\"{y0:.1}\" stroke=\"#999\"/>\
<line x1=\"{pad}\" y1=\"{yt:.1}\" x2=\"{xe:.1}\" y2=\"{yt:.1}\" stroke=\"#ddd\" stroke-dasharray=\"4\"/>\
<path d=\"{path}\" fill=\"none\" stroke=\"#2a6\" stroke-width=\"2\"/>\
<text x=\"2\" y=\"{yt:.1}\" font-size=\"11\">{total}</text><text x=\"2\" y=\"{y0:.1}\" font-size=\"11\">0</text>\
<text x=\"{pad}\" y=\"{h}\" font-size=\"11\" dy=\"-4\">{}</text><text x=\"{xe:.1}\" y=\"{h}\" font-size=\"11\" dy=\"-4\" text-anchor=\"end\">{}</text></svg>\
<p class=\"progress\">{last} of {total} instances run it.</p>",
        utc(start),
        utc(end),
        y0 = y(0),
        yt = y(total),
        xe = x(end),
    )
}

fn instance_row(i: &Instance, now: i64) -> String {
    let age = now - i.last_check;
    let class = if i.rollbacks > 0 || i.status == "Error" || i.status == "RolledBack" {
        " class=\"bad\""
    } else {
        ""
    };
    format!(
        "<tr{class}><td><a href=\"/dashboard/instances/{id}\"><code>{id}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} s ago</td></tr>\n",
        esc(&i.group),
        esc(&i.version),
        esc(&i.status),
        esc(i.offered.as_deref().unwrap_or("")),
        i.failures,
        i.rollbacks,
        age.max(0),
        id = esc(&i.id),
    )
}

fn overview(svc: &Service, now: i64) -> Result<String, Error> {
    svc.with_store(|s| {
        let groups = s.groups()?;
        let releases = s.releases()?;
        let instances = s.instances()?;
        let events = s.recent_events(CHART_EVENTS)?;
        let mut b = String::from("<h1>Ferrite updates</h1>\n<h2>Groups</h2>\n<table id=\"groups\"><tr><th>Group</th><th>Channel</th><th>Newest release</th><th>Updates</th><th>Safe mode</th><th>Limit</th><th>Instances</th><th></th></tr>\n");
        for g in &groups {
            let newest = s.latest(&g.channel)?.map(|r| r.version).unwrap_or_default();
            let n = instances.iter().filter(|i| i.group == g.name).count();
            let state = if !g.updates_enabled {
                "<span class=\"bad\">off</span>"
            } else if g.paused {
                "<span class=\"bad\">paused</span>"
            } else {
                "<span class=\"ok\">on</span>"
            };
            let (action, label) = if g.paused { ("resume", "Resume") } else { ("pause", "Pause") };
            let limit = if g.max_updates == 0 {
                "none".to_string()
            } else {
                format!("{} per {} s", g.max_updates, g.period_secs)
            };
            let _ = writeln!(
                b,
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{state}</td><td>{}</td><td>{limit}</td><td>{n}</td><td><form method=\"post\" action=\"/dashboard/groups/{name}/{action}\"><button>{label}</button></form></td></tr>",
                esc(&g.channel),
                esc(&newest),
                if g.safe_mode { "on" } else { "off" },
                name = esc(&g.name),
            );
        }
        b.push_str("</table>\n<h2>Versions</h2>\n<table id=\"versions\"><tr><th>Group</th><th>Version</th><th>Instances</th></tr>\n");
        let mut breakdown: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for i in &instances {
            *breakdown.entry((i.group.as_str(), i.version.as_str())).or_default() += 1;
        }
        for ((g, v), n) in &breakdown {
            let _ = writeln!(b, "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>", esc(g), esc(v));
        }
        b.push_str("</table>\n<h2>Rollouts</h2>\n");
        let mut shown = 0;
        for (r, published) in releases.iter().take(3) {
            let members = instances
                .iter()
                .filter(|i| groups.iter().any(|g| g.name == i.group && g.channel == r.channel))
                .count();
            let _ = writeln!(
                b,
                "<h3>{} on {} (published {})</h3>",
                esc(&r.version),
                esc(&r.channel),
                utc(*published)
            );
            b.push_str(&chart(&rollout(&events, &r.version), members, now));
            shown += 1;
        }
        if shown == 0 {
            b.push_str("<p>No release is published yet (<code>ferrite release publish</code>).</p>\n");
        }
        b.push_str("<h2>Instances</h2>\n<table id=\"instances\"><tr><th>Machine ID</th><th>Group</th><th>Version</th><th>Status</th><th>Offered</th><th>Failures</th><th>Rollbacks</th><th>Last check</th></tr>\n");
        for i in &instances {
            b.push_str(&instance_row(i, now));
        }
        b.push_str("</table>\n");
        Ok(b)
    })
}

async fn dashboard(State(svc): State<Arc<Service>>) -> Response {
    match overview(&svc, crate::now()) {
        Ok(body) => page("Ferrite updates", &body).into_response(),
        Err(e) => fail(&e),
    }
}

async fn instance(State(svc): State<Arc<Service>>, UrlPath(id): UrlPath<String>) -> Response {
    let found = svc.with_store(|s| Ok::<_, Error>((s.instance(&id)?, s.events(&id)?)));
    let (inst, events) = match found {
        Ok((Some(i), e)) => (i, e),
        Ok((None, _)) => {
            return (StatusCode::NOT_FOUND, format!("no instance {id:?}\n")).into_response()
        }
        Err(e) => return fail(&e),
    };
    let mut b = format!(
        "<p><a href=\"/dashboard\">All instances</a></p><h1>Instance <code>{}</code></h1>\n<table>{}</table>\n<h2>History</h2>\n<table id=\"history\"><tr><th>Time (UTC)</th><th>Event</th><th>Version</th></tr>\n",
        esc(&inst.id),
        instance_row(&inst, crate::now())
    );
    let mut last_version: Option<&str> = None;
    for e in &events {
        // Routine check-ins are shown when the version they report changes.
        let routine = (e.kind, e.result) == (3, 2) && last_version == Some(e.version.as_str());
        last_version = Some(e.version.as_str());
        if routine {
            continue;
        }
        let class = if e.result == 0 { " class=\"bad\"" } else { "" };
        let _ = writeln!(
            b,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td></tr>",
            utc(e.at),
            esc(&describe(e)),
            esc(&e.version)
        );
    }
    b.push_str("</table>\n");
    page(&format!("Instance {}", inst.id), &b).into_response()
}

async fn set_paused(svc: &Service, group: &str, paused: bool) -> Response {
    match svc.with_store(|s| s.set_paused(group, paused)) {
        Ok(true) => {
            tracing::info!(group, "{}", if paused { "paused" } else { "resumed" });
            Redirect::to("/dashboard").into_response()
        }
        Ok(false) => (StatusCode::NOT_FOUND, format!("no group {group:?}\n")).into_response(),
        Err(e) => fail(&e),
    }
}

async fn pause(State(svc): State<Arc<Service>>, UrlPath(g): UrlPath<String>) -> Response {
    set_paused(&svc, &g, true).await
}

async fn resume(State(svc): State<Arc<Service>>, UrlPath(g): UrlPath<String>) -> Response {
    set_paused(&svc, &g, false).await
}

async fn root() -> Response {
    ([(header::LOCATION, "/dashboard")], StatusCode::SEE_OTHER).into_response()
}

/// The dashboard's routes.
pub fn routes() -> axum::Router<Arc<Service>> {
    axum::Router::new()
        .route("/", axum::routing::get(root))
        .route("/dashboard", axum::routing::get(dashboard))
        .route("/dashboard/instances/{id}", axum::routing::get(instance))
        .route("/dashboard/groups/{name}/pause", axum::routing::post(pause))
        .route(
            "/dashboard/groups/{name}/resume",
            axum::routing::post(resume),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: i64, version: &str) -> EventRecord {
        EventRecord {
            at,
            kind: 3,
            result: 2,
            code: None,
            version: version.into(),
        }
    }

    #[test]
    fn a_rollout_counts_instances_as_they_report_the_release() {
        let events = vec![
            ("a".to_string(), ev(10, "1.0.0")),
            ("b".to_string(), ev(10, "1.0.0")),
            ("a".to_string(), ev(20, "2.0.0")),
            ("a".to_string(), ev(25, "2.0.0")),
            ("b".to_string(), ev(30, "2.0.0")),
            ("a".to_string(), ev(40, "1.0.0")),
        ];
        assert_eq!(rollout(&events, "2.0.0"), [(20, 1), (30, 2), (40, 1)]);
        assert!(rollout(&events, "3.0.0").is_empty());
    }

    #[test]
    fn times_and_text_are_safe_to_show() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_432_166_400), "2015-05-21 00:00:00");
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        let rolled = EventRecord {
            at: 0,
            kind: 3,
            result: 0,
            code: Some(44),
            version: "1.0.0".into(),
        };
        assert_eq!(describe(&rolled), "rolled back (error code 44)");
    }
}
