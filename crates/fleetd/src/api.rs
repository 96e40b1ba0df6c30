//! fleet's HTTP API v1, under `/fleet/v1` and the legacy `/v1-alpha`: machines, units,
//! unit states, with fleet's JSON shapes (`omitempty`), status codes, error bodies,
//! 100-item pages with fleet's page tokens, and `Server: fleetd/<version>`. Until this
//! machine's first successful registration every request gets 503.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use fleet_model::api::{
    parse_metadata_patch, ErrorBody, ErrorReply, Machine as MachineJson, MachinePage, StatePage,
    Unit as UnitJson, UnitPage, UnitState as StateJson,
};
use fleet_model::name::{validate_name, NameInfo};
use fleet_model::{JobState, Machine, Requirements};
use fleet_store::{JobRecord, KvStore, Registry, RegistryError, UnitState};
use serde::Serialize;
use tokio::sync::watch;

const PAGE: u16 = 100;

/// What the handlers share.
#[derive(Debug)]
pub struct Api<S> {
    /// The registry.
    pub reg: Arc<Registry<S>>,
    /// True once this machine has registered (fleet's first heartbeat).
    pub ready: watch::Receiver<bool>,
    /// The `Server` header: `fleetd/<version>`.
    pub server: &'static str,
}

/// The router: every path goes through [`handle`], which routes as fleet did.
pub fn router<S: KvStore>(api: Arc<Api<S>>) -> axum::Router {
    axum::Router::new().fallback(handle::<S>).with_state(api)
}

fn json_response(server: &'static str, status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::SERVER, server),
        ],
        text,
    )
        .into_response()
}

fn error(server: &'static str, status: StatusCode, message: &str) -> Response {
    let body = ErrorReply {
        error: ErrorBody {
            code: status.as_u16(),
            message: message.into(),
        },
    };
    json_response(server, status, &body)
}

fn empty(server: &'static str, status: StatusCode) -> Response {
    (status, [(header::SERVER, server)]).into_response()
}

/// fleet's page token: URL-safe base64 of little-endian u16 limit and u16 page (1-based).
fn token(page: u16) -> String {
    let mut b = PAGE.to_le_bytes().to_vec();
    b.extend_from_slice(&page.to_le_bytes());
    base64::engine::general_purpose::URL_SAFE.encode(b)
}

fn parse_token(t: &str) -> Result<u16, &'static str> {
    let b = base64::engine::general_purpose::URL_SAFE
        .decode(t)
        .map_err(|_| "invalid page token")?;
    if b.len() != 4 {
        return Err("invalid page token");
    }
    let limit = u16::from_le_bytes([b[0], b[1]]);
    let page = u16::from_le_bytes([b[2], b[3]]);
    if limit != PAGE {
        return Err("token limit must be 100");
    }
    if page == 0 {
        return Err("token page must be greater than zero");
    }
    Ok(page)
}

fn query(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The requested page (1-based), or the 400 message.
fn page_of(uri: &Uri) -> Result<u16, &'static str> {
    let tokens: Vec<String> = query(uri)
        .into_iter()
        .filter(|(k, _)| k == "nextPageToken")
        .map(|(_, v)| v)
        .collect();
    match tokens.as_slice() {
        [] => Ok(1),
        [t] => parse_token(t),
        _ => Err("too many values for page token"),
    }
}

/// A read-only collection's page: GET only.
#[allow(
    clippy::result_large_err,
    reason = "the reply is returned to axum at once, never propagated"
)]
fn get_page(v: &'static str, method: &Method, uri: &Uri) -> Result<u16, Response> {
    collection_page(
        v,
        method,
        uri,
        StatusCode::METHOD_NOT_ALLOWED,
        "only GET supported against this resource",
    )
}

/// The page a GET on a collection asks for, or the reply: `refusal` for another method
/// (fleet answered 400 on some collections and 405 on others), 400 for a bad token.
#[allow(
    clippy::result_large_err,
    reason = "the reply is returned to axum at once, never propagated"
)]
fn collection_page(
    v: &'static str,
    method: &Method,
    uri: &Uri,
    refusal: StatusCode,
    message: &str,
) -> Result<u16, Response> {
    if method != Method::GET {
        return Err(error(v, refusal, message));
    }
    page_of(uri).map_err(|m| error(v, StatusCode::BAD_REQUEST, m))
}

/// Slices a page out of `items` and names the next one.
fn paginate<T>(items: Vec<T>, page: u16) -> (Vec<T>, Option<String>) {
    let start = (usize::from(page) - 1) * usize::from(PAGE);
    let more = items.len() > start + usize::from(PAGE);
    let slice = items
        .into_iter()
        .skip(start)
        .take(usize::from(PAGE))
        .collect();
    (slice, more.then(|| token(page + 1)))
}

/// The API's `currentState`: fleet's derived state, empty for global units.
fn current_state(j: &JobRecord, states: &[UnitState]) -> String {
    if j.global {
        String::new()
    } else {
        j.current_state(states).to_string()
    }
}

fn unit_json(j: &JobRecord, states: &[UnitState]) -> UnitJson {
    let options = j
        .unit
        .as_deref()
        .and_then(|t| systemd_unit::fleet::deserialize(t).ok())
        .unwrap_or_default()
        .into_iter()
        .map(Into::into)
        .collect();
    UnitJson {
        current_state: current_state(j, states),
        desired_state: j.target_state.to_string(),
        machine_id: if j.global {
            String::new()
        } else {
            j.target.clone().unwrap_or_default()
        },
        name: j.name.clone(),
        options,
    }
}

fn machine_json(m: Machine) -> MachineJson {
    MachineJson {
        id: m.id,
        metadata: m.metadata,
        primary_ip: m.public_ip,
    }
}

fn internal(v: &'static str, e: &RegistryError) -> Response {
    tracing::warn!("API: {e}");
    error(v, StatusCode::INTERNAL_SERVER_ERROR, "")
}

/// Routes one request as fleet's API did.
pub async fn handle<S: KvStore>(
    State(api): State<Arc<Api<S>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = api.server;
    tracing::debug!("HTTP {method} {uri}");
    if !*api.ready.borrow() {
        return error(
            v,
            StatusCode::SERVICE_UNAVAILABLE,
            "fleet server unable to communicate with etcd",
        );
    }
    let path = uri.path();
    let rest = path
        .strip_prefix("/fleet/v1")
        .or_else(|| path.strip_prefix("/v1-alpha"));
    let Some(rest) = rest else {
        return if path == "/" {
            error(v, StatusCode::METHOD_NOT_ALLOWED, "")
        } else {
            error(v, StatusCode::NOT_FOUND, "")
        };
    };
    let reg = &api.reg;
    match rest {
        "" => error(v, StatusCode::METHOD_NOT_ALLOWED, ""),
        "/discovery" => {
            if method != Method::GET {
                return error(
                    v,
                    StatusCode::BAD_REQUEST,
                    "only HTTP GET supported against this resource",
                );
            }
            let doc = crate::discovery::document();
            json_response(v, StatusCode::OK, &doc)
        }
        "/machines" if method == Method::PATCH => match parse_metadata_patch(&body) {
            Err(e) => error(v, StatusCode::BAD_REQUEST, &e.to_string()),
            Ok(ops) => match reg.set_machine_metadata(&ops).await {
                Ok(()) => empty(v, StatusCode::NO_CONTENT),
                Err(e) => internal(v, &e),
            },
        },
        "/machines" => list_machines(&api, &method, &uri).await,
        "/units" => list_units(&api, &method, &uri).await,
        "/state" => list_states(&api, &method, &uri).await,
        item => {
            let (kind, name) = match (item.strip_prefix("/units/"), item.strip_prefix("/state/")) {
                (Some(n), _) => ("units", n),
                (_, Some(n)) => ("state", n),
                _ => return error(v, StatusCode::NOT_FOUND, ""),
            };
            if name.is_empty() || name.contains('/') {
                return error(v, StatusCode::NOT_FOUND, "");
            }
            let Ok(name) = percent_encoding::percent_decode_str(name).decode_utf8() else {
                return error(v, StatusCode::NOT_FOUND, "");
            };
            if kind == "state" {
                return state_item(&api, &method, &name).await;
            }
            unit_item(&api, &method, &name, &headers, &body).await
        }
    }
}

/// `GET /machines`: the machines, paged.
async fn list_machines<S: KvStore>(api: &Api<S>, method: &Method, uri: &Uri) -> Response {
    let (v, reg) = (api.server, &api.reg);
    let page = match collection_page(
        v,
        method,
        uri,
        StatusCode::METHOD_NOT_ALLOWED,
        "only GET and PATCH supported against this resource",
    ) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ms = match reg.machines().await {
        Ok(m) => m,
        Err(e) => return internal(v, &e),
    };
    let (items, next) = paginate(ms.into_iter().map(machine_json).collect::<Vec<_>>(), page);
    let body = MachinePage {
        machines: items,
        next_page_token: next,
    };
    json_response(v, StatusCode::OK, &body)
}

/// `GET /units`: the units with their current states, paged.
async fn list_units<S: KvStore>(api: &Api<S>, method: &Method, uri: &Uri) -> Response {
    let (v, reg) = (api.server, &api.reg);
    let page = match get_page(v, method, uri) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let fetched = async { Ok::<_, RegistryError>((reg.jobs().await?.0, reg.states().await?)) };
    let (jobs, states) = match fetched.await {
        Ok(x) => x,
        Err(e) => return internal(v, &e),
    };
    let units: Vec<UnitJson> = jobs.iter().map(|j| unit_json(j, &states)).collect();
    let (items, next) = paginate(units, page);
    let body = UnitPage {
        units: items,
        next_page_token: next,
    };
    json_response(v, StatusCode::OK, &body)
}

/// `GET /state`: unit states, filtered by `machineID` and `unitName`, paged.
async fn list_states<S: KvStore>(api: &Api<S>, method: &Method, uri: &Uri) -> Response {
    let (v, reg) = (api.server, &api.reg);
    let page = match get_page(v, method, uri) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let q = query(uri);
    let first = |k: &str| q.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    let (machine, unit) = (first("machineID"), first("unitName"));
    let mut states = match reg.states().await {
        Ok(s) => s,
        Err(e) => return internal(v, &e),
    };
    states.retain(|s| {
        machine.as_ref().is_none_or(|m| &s.machine_id == m)
            && unit.as_ref().is_none_or(|u| &s.unit == u)
    });
    states.sort_by(|a, b| {
        (a.unit.as_str(), a.machine_id.as_str()).cmp(&(b.unit.as_str(), b.machine_id.as_str()))
    });
    let list: Vec<StateJson> = states.into_iter().map(state_json).collect();
    let (items, next) = paginate(list, page);
    let body = StatePage {
        states: items,
        next_page_token: next,
    };
    json_response(v, StatusCode::OK, &body)
}

/// fleet 1.0's `GET /state/{unitName}`: the state the first machine (by ID) reports.
async fn state_item<S: KvStore>(api: &Api<S>, method: &Method, name: &str) -> Response {
    let v = api.server;
    if *method != Method::GET {
        return error(
            v,
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET supported against this resource",
        );
    }
    match api.reg.states_of(name).await {
        Ok(states) => match states
            .into_iter()
            .min_by(|a, b| a.machine_id.cmp(&b.machine_id))
        {
            Some(s) => json_response(v, StatusCode::OK, &state_json(s)),
            None => error(v, StatusCode::NOT_FOUND, "unit state does not exist"),
        },
        Err(e) => internal(v, &e),
    }
}

fn state_json(s: UnitState) -> StateJson {
    StateJson {
        hash: s.hash,
        machine_id: s.machine_id,
        name: s.unit,
        systemd_active_state: s.active_state,
        systemd_load_state: s.load_state,
        systemd_sub_state: s.sub_state,
    }
}

async fn unit_item<S: KvStore>(
    api: &Api<S>,
    method: &Method,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let v = api.server;
    let reg = &api.reg;
    // One unit's keys, not the whole registry: a PUT per unit stays O(1) in cluster size.
    let existing = match reg.job(name).await {
        Ok(j) => j,
        Err(e) => return internal(v, &e),
    };
    let existing = existing.as_ref();
    match *method {
        Method::GET => match existing {
            Some(j) => match reg.states().await {
                Ok(states) => json_response(v, StatusCode::OK, &unit_json(j, &states)),
                Err(e) => internal(v, &e),
            },
            None => error(v, StatusCode::NOT_FOUND, "unit does not exist"),
        },
        Method::DELETE => match existing {
            Some(_) => match reg.destroy_unit(name).await {
                Ok(_) => empty(v, StatusCode::NO_CONTENT),
                Err(e) => internal(v, &e),
            },
            None => error(v, StatusCode::NOT_FOUND, "unit does not exist"),
        },
        Method::PUT => put_unit(api, name, headers, body, existing).await,
        _ => error(
            v,
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET, PUT and DELETE supported against this resource",
        ),
    }
}

/// `PUT /units/{name}`: create a unit, or change a unit's desired state or (fleet 1.0)
/// its options.
async fn put_unit<S: KvStore>(
    api: &Api<S>,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    existing: Option<&JobRecord>,
) -> Response {
    let v = api.server;
    let types: Vec<_> = headers.get_all(header::CONTENT_TYPE).iter().collect();
    if types.len() != 1 {
        return error(
            v,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("expected 1 Content-Type, got {}", types.len()),
        );
    }
    let media = types[0]
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if media != "application/json" {
        return error(
            v,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only acceptable Content-Type is application/json",
        );
    }
    let unit: UnitJson = match serde_json::from_slice(body) {
        Ok(u) => u,
        Err(e) => {
            return error(
                v,
                StatusCode::BAD_REQUEST,
                &format!("unable to decode body: {e}"),
            )
        }
    };
    if !unit.name.is_empty() && unit.name != name {
        return error(
            v,
            StatusCode::BAD_REQUEST,
            &format!(
                "name in URL {name:?} differs from unit name in request body {:?}",
                unit.name
            ),
        );
    }
    if let Err(e) = validate_name(name) {
        return error(v, StatusCode::BAD_REQUEST, &e.to_string());
    }
    match existing {
        None => create_unit(api, name, &unit).await,
        Some(j) => update_unit(api, name, &unit, j).await,
    }
}

/// A new unit: its options checked, inactive unless a desired state is given.
async fn create_unit<S: KvStore>(api: &Api<S>, name: &str, unit: &UnitJson) -> Response {
    let (v, reg) = (api.server, &api.reg);
    if unit.options.is_empty() {
        return error(
            v,
            StatusCode::CONFLICT,
            "unit does not exist and options field empty",
        );
    }
    let opts: Vec<systemd_unit::fleet::UnitOption> =
        unit.options.iter().cloned().map(Into::into).collect();
    if let Err(e) = check_options(name, &opts) {
        return error(v, StatusCode::BAD_REQUEST, &e);
    }
    let state = if unit.desired_state.is_empty() {
        JobState::Inactive
    } else {
        match JobState::parse(&unit.desired_state) {
            Some(s) => s,
            None => return error(v, StatusCode::BAD_REQUEST, "invalid desiredState"),
        }
    };
    match reg
        .create_unit(name, &systemd_unit::fleet::serialize(&opts), state)
        .await
    {
        Ok(_) => empty(v, StatusCode::CREATED),
        Err(RegistryError::JobExists(_)) => error(v, StatusCode::CONFLICT, "job already exists"),
        Err(e) => internal(v, &e),
    }
}

/// An existing unit: fleet 1.0's replace-by-PUT, then the desired state.
async fn update_unit<S: KvStore>(
    api: &Api<S>,
    name: &str,
    unit: &UnitJson,
    j: &JobRecord,
) -> Response {
    let (v, reg) = (api.server, &api.reg);
    // fleet 1.0: options that differ from the stored unit replace its content
    // (what `fleetctl --replace` sends); the same options change nothing.
    let opts: Vec<systemd_unit::fleet::UnitOption> =
        unit.options.iter().cloned().map(Into::into).collect();
    let replace = !opts.is_empty() && systemd_unit::fleet::UnitHash::of_options(&opts) != j.hash;
    if replace {
        if let Err(e) = check_options(name, &opts) {
            return error(v, StatusCode::BAD_REQUEST, &e);
        }
    }
    let state = if unit.desired_state.is_empty() {
        if !replace {
            return error(
                v,
                StatusCode::CONFLICT,
                "must provide DesiredState to update existing unit",
            );
        }
        // fleet 1.0 created the unit anew, inactive unless told otherwise:
        // its clients wait for "inactive" before they load or start the new
        // content.
        Some(JobState::Inactive)
    } else {
        let Some(state) = JobState::parse(&unit.desired_state) else {
            return error(v, StatusCode::BAD_REQUEST, "invalid desiredState");
        };
        if state != JobState::Inactive && NameInfo::parse(name).is_some_and(|i| i.is_template()) {
            return error(
                v,
                StatusCode::BAD_REQUEST,
                &format!("cannot activate template {name:?}"),
            );
        }
        Some(state)
    };
    if replace {
        let text = systemd_unit::fleet::serialize(&opts);
        if let Err(e) = reg.replace_unit(name, &text).await {
            return internal(v, &e);
        }
    }
    if let Some(state) = state {
        if let Err(e) = reg.set_target_state(name, state).await {
            return internal(v, &e);
        }
    }
    empty(
        v,
        if replace {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        },
    )
}

/// fleet's `ValidateOptions`: options that read back as given (Ferrite refuses what
/// fleet stored and then read back as other options), and requirements that can be met.
fn check_options(name: &str, opts: &[systemd_unit::fleet::UnitOption]) -> Result<(), String> {
    systemd_unit::fleet::check_round_trip(opts).map_err(|e| e.to_string())?;
    Requirements::from_options(name, opts)
        .validate()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_like_fleet() {
        assert_eq!(token(2), "ZAACAA==");
        assert_eq!(token(3), "ZAADAA==");
        assert_eq!(parse_token("ZAACAA=="), Ok(2));
        assert_eq!(parse_token("EwBMLg=="), Err("token limit must be 100"));
        assert_eq!(
            parse_token("ZAAAAA=="),
            Err("token page must be greater than zero")
        );
        assert!(parse_token("!!").is_err());
    }
}
