//! The streamer's controls over one receiver: pause, resume, skip, clear, replay, approve and
//! deny, a test alert, and the receiver's state, queue and history.
//!
//! Each takes a publish key or the receiver's dashboard token (never its widget token, which is
//! shown on stream), as `Authorization: Bearer ...` or `?token=`. Each change is one command of
//! the state machine, atomic in the store, and each answers the receiver's state read after it.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::token::opens;
use super::{authorize_publisher, bearer, ApiError, AppState};
use crate::alert::{AlertRecord, FieldError, NewAlert, ReceiverId};
use crate::auth::Purpose;
use crate::design::Designs;
use crate::moderation::Settings;
use crate::startup::receiver_url;
use crate::store::history::{Mark, Record};
use crate::store::machine::Command;
use crate::store::Publish;

/// The query of a control: the dashboard token, and for skip the alert meant.
#[derive(Deserialize)]
pub struct ControlQuery {
    token: Option<String>,
    /// Skip this alert only: a skip clicked just as the alert ended must not skip the next.
    id: Option<String>,
}

/// A publish key, or this receiver's dashboard token of its current generation, in the header
/// or the query.
pub(super) async fn authorize_controller(
    req: &HttpRequest,
    state: &AppState,
    receiver: &ReceiverId,
    query_token: Option<&str>,
) -> Result<(), ApiError> {
    if authorize_publisher(req, &state.publish_keys).is_ok() {
        return Ok(());
    }
    let presented = [bearer(req), query_token];
    if opens(state, Purpose::Dashboard, receiver, presented).await? {
        Ok(())
    } else {
        Err(ApiError::NotController)
    }
}

/// The receiver a control names, once the caller has shown it may control it.
pub(super) async fn controlled(
    req: &HttpRequest,
    path: &str,
    token: Option<&str>,
    state: &AppState,
) -> Result<ReceiverId, ApiError> {
    let receiver = ReceiverId::parse(path)?;
    authorize_controller(req, state, &receiver, token).await?;
    Ok(receiver)
}

/// The query of a rotation: which token.
#[derive(Deserialize)]
pub struct RotateQuery {
    token: Option<String>,
    which: Option<String>,
}

/// `POST /receivers/{receiver}/tokens/rotate[?which=dashboard]`: a new widget token (or
/// dashboard token), after which the old one opens nothing, on every node; widgets holding the
/// old widget token are closed with 4001. Answers the new URL.
pub async fn rotate(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<RotateQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let purpose = match query.which.as_deref() {
        None | Some("widget") => Purpose::Widget,
        Some("dashboard") => Purpose::Dashboard,
        Some(_) => {
            return Err(ApiError::Invalid(FieldError::invalid(
                "which",
                "which must be \"widget\" or \"dashboard\"",
            )))
        }
    };
    let generations = state
        .hub
        .store()
        .rotate(&receiver, purpose)
        .await
        .map_err(ApiError::of_control)?;
    match purpose {
        Purpose::Widget => state.hub.revoke(&receiver),
        Purpose::Dashboard => state.hub.feed.revoke(&receiver),
    }
    let info = req.connection_info();
    let base = format!("{}://{}", info.scheme(), info.host());
    let generation = generations.of(purpose);
    Ok(HttpResponse::Ok().json(json!({
        "receiver": receiver,
        "which": purpose.name(),
        "generation": generation,
        "url": receiver_url(&base, &state.tokens, purpose, &receiver, generation),
    })))
}

/// `GET /receivers/{receiver}`.
pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    Ok(HttpResponse::Ok().json(state_of(&state, &receiver).await?))
}

/// `POST /receivers/{receiver}/pause`: nothing new goes out; the alert in flight finishes.
pub async fn pause(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    control(req, path, query, state, |_| Command::Pause { paused: true }).await
}

/// `POST /receivers/{receiver}/resume`: the next alert goes out at once.
pub async fn resume(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    control(req, path, query, state, |_| Command::Pause {
        paused: false,
    })
    .await
}

/// `POST /receivers/{receiver}/skip[?id=]`: the alert in flight completes as skipped, its
/// widgets stop it at once, and the next goes out.
pub async fn skip(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    control(req, path, query, state, |q| Command::Skip {
        id: q.id.as_deref(),
    })
    .await
}

/// `DELETE /receivers/{receiver}/queue`: every waiting alert is removed, not the one in flight.
pub async fn clear(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let cleared = state
        .hub
        .clear(&receiver)
        .await
        .map_err(ApiError::of_control)?;
    let mut body = state_of(&state, &receiver).await?;
    body["cleared"] = json!(cleared);
    Ok(HttpResponse::Ok().json(body))
}

/// The query of a page: `limit` (1 to [`MOST_PER_PAGE`], default [`PER_PAGE`]) and `offset`.
#[derive(Deserialize)]
pub struct PageQuery {
    token: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

const PER_PAGE: u64 = 50;
const MOST_PER_PAGE: u64 = 500;

/// A page's `limit`, checked.
fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    let limit = limit.unwrap_or(PER_PAGE);
    if !(1..=MOST_PER_PAGE).contains(&limit) {
        return Err(ApiError::Invalid(FieldError::invalid(
            "limit",
            format!("limit must be from 1 to {MOST_PER_PAGE}"),
        )));
    }
    Ok(limit)
}

/// `GET /receivers/{receiver}/queue?limit=&offset=`: the waiting alerts, in the order they go
/// out.
pub async fn queue(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let limit = page_limit(query.limit)?;
    let offset = query.offset.unwrap_or(0);
    let page = state.hub.store().waiting(&receiver, offset, limit).await?;
    let parsed = |all: &[std::sync::Arc<str>]| -> Vec<Value> {
        all.iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect()
    };
    Ok(HttpResponse::Ok().json(json!({
        "receiver": receiver,
        "total": page.total,
        "offset": offset,
        "limit": limit,
        "alerts": parsed(&page.alerts),
        "held": parsed(&page.held),
    })))
}

/// The query of a page of history: `limit` (1 to [`MOST_PER_PAGE`], default [`PER_PAGE`]) and
/// `before`, the id of the last alert of the page before.
#[derive(Deserialize)]
pub struct HistoryQuery {
    token: Option<String>,
    limit: Option<u64>,
    before: Option<String>,
}

/// `GET /receivers/{receiver}/history?limit=&before=`: the alerts that left the receiver,
/// newest first, each with its status and trail. `next` is the `before` of the next page, or null
/// on the last.
pub async fn history(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let limit = page_limit(query.limit)?;
    let before = query.before.as_deref();
    let page = state
        .hub
        .store()
        .history(&receiver, before, limit as usize)
        .await?;
    let next = match (page.more, page.records.last()) {
        (true, Some(last)) => json!(&*last.id),
        _ => Value::Null,
    };
    // Which design and variation each alert played with: resolved again with the version of
    // the designs in force when it was last sent (resolving is a pure function of the designs
    // and the alert), while the store still keeps that version.
    let kept = state
        .hub
        .store()
        .designs(&receiver, crate::store::DESIGN_VERSIONS_KEPT)
        .await?;
    // Each version parsed once for the page, however many of its alerts it played.
    let versions: Vec<(u64, u64, Option<Designs>)> = kept
        .iter()
        .map(|v| (v.version, v.at_ms, Designs::parse_stored(&v.json).ok()))
        .collect();
    let alerts: Vec<Value> = page
        .records
        .iter()
        .map(|record| {
            let mut entry = history_entry(record);
            if let Some(played) = played_with(record, &versions) {
                entry["design"] = played;
            }
            entry
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "receiver": receiver,
        "limit": limit,
        "before": before,
        "history": alerts,
        "next": next,
    })))
}

/// `{"version", "design", "variation"}`: the look an alert of history was sent with, if it was
/// sent and the designs of then are still kept (version 0: none were put yet).
fn played_with(record: &Record, versions: &[(u64, u64, Option<Designs>)]) -> Option<Value> {
    let sent = record
        .trail
        .steps()
        .into_iter()
        .filter(|s| s.mark == Mark::Sent)
        .map(|s| s.at)
        .next_back()?;
    // Newest first: the first put at or before the send.
    let built_in = Designs::default();
    let (version, designs) = match versions.iter().find(|(_, at, _)| *at <= sent) {
        Some((version, _, designs)) => (*version, designs.as_ref()?),
        None if versions.len() < crate::store::DESIGN_VERSIONS_KEPT => (0, &built_in),
        None => return None,
    };
    let alert: Value = serde_json::from_str(&record.json).ok()?;
    let look = designs.resolve(&alert);
    Some(json!({"version": version, "design": look.design, "variation": look.variation}))
}

/// One alert of history as the API shows it: `{id, status, trail: [{event, at[, attempt]}],
/// alert}`, times in ms since the Unix epoch.
fn history_entry(record: &Record) -> Value {
    let trail: Vec<Value> = record
        .trail
        .steps()
        .into_iter()
        .map(|step| match step.attempt {
            Some(attempt) => json!({"event": step.mark.name(), "at": step.at, "attempt": attempt}),
            None => json!({"event": step.mark.name(), "at": step.at}),
        })
        .collect();
    json!({
        "id": &*record.id,
        "status": record.status.name(),
        "trail": trail,
        "alert": serde_json::from_str::<Value>(&record.json).ok(),
    })
}

/// `POST /receivers/{receiver}/replay/{id}`: an alert from history queued again at the head,
/// with a new id and `replay_of` naming it. Answers the receiver's state, the new alert's id and
/// its position.
pub async fn replay(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (receiver, id) = path.into_inner();
    let receiver = controlled(&req, &receiver, query.token.as_deref(), &state).await?;
    let store = state.hub.store();
    let kept = store.history(&receiver, None, usize::MAX).await?;
    let record = kept
        .records
        .iter()
        .find(|r| *r.id == *id)
        .and_then(|r| AlertRecord::replay_of(&receiver, &r.json))
        .ok_or_else(|| ApiError::NotInHistory(id.clone()))?;
    let position = match state.hub.replay(&record).await? {
        Publish::Accepted { position, .. } => position,
        Publish::QueueFull => return Err(ApiError::QueueFull),
        Publish::Duplicate { .. } | Publish::Held { .. } => {
            return Err(ApiError::of_control(crate::store::StoreError::Protocol(
                "a replay was taken for a duplicate, or held".into(),
            )))
        }
    };
    let mut body = state_of(&state, &receiver).await?;
    body["id"] = json!(record.id);
    body["replay_of"] = json!(id);
    body["position"] = json!(position);
    Ok(HttpResponse::Accepted().json(body))
}

/// `POST /receivers/{receiver}/approve/{id}`: a held alert joins the back of its lane.
pub async fn approve(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    approval(req, path, query, state, true).await
}

/// `POST /receivers/{receiver}/deny/{id}`: a held alert goes into history as denied, never shown.
pub async fn deny(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    approval(req, path, query, state, false).await
}

async fn approval(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
    approved: bool,
) -> Result<HttpResponse, ApiError> {
    let (receiver, id) = path.into_inner();
    let receiver = controlled(&req, &receiver, query.token.as_deref(), &state).await?;
    let held = state
        .hub
        .decide(&receiver, &id, approved)
        .await
        .map_err(ApiError::of_control)?;
    if !held {
        return Err(ApiError::NotHeld(id));
    }
    let mut body = state_of(&state, &receiver).await?;
    body[if approved { "approved" } else { "denied" }] = json!(id);
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /receivers/{receiver}/settings`: the moderation settings, defaults filled in.
pub async fn get_settings(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let settings = state.settings.get(&receiver).await?;
    Ok(HttpResponse::Ok().json(&*settings))
}

/// `PUT /receivers/{receiver}/settings`: replaces the moderation settings whole. They apply to
/// every publish from then on: at once on this node, within `SETTINGS_FRESH` on the others.
pub async fn put_settings(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let settings = Settings::parse(&body)?;
    state
        .settings
        .put(&receiver, settings.clone())
        .await
        .map_err(ApiError::of_control)?;
    Ok(HttpResponse::Ok().json(settings))
}

/// A test alert: with no body, `kind: "test"` from cuebox; with a body, the alert it describes
/// (`kind`, `from`, `amount`, `message`, `data`, as a publish takes them; `kind` "test" unless
/// given), so the streamer can try the look of any kind and variation.
pub(super) fn sample_alert(receiver: &ReceiverId, body: &[u8]) -> Result<NewAlert, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(NewAlert::test(receiver.clone()));
    }
    let mut sample: Value = serde_json::from_slice(body).map_err(|e| FieldError {
        code: "invalid_json",
        message: format!("the body is not valid JSON: {e}"),
        field: None,
    })?;
    let Some(fields) = sample.as_object_mut() else {
        return Err(FieldError::invalid("body", "a test alert is a JSON object").into());
    };
    if fields
        .get("receiver")
        .is_some_and(|r| r != receiver.as_str())
    {
        return Err(FieldError::invalid("receiver", "a test alert is for this receiver").into());
    }
    fields.insert("receiver".into(), json!(receiver));
    fields.entry("kind").or_insert_with(|| json!("test"));
    fields.entry("from").or_insert_with(|| json!("cuebox"));
    let body = serde_json::to_vec(&sample).unwrap_or_default();
    Ok(NewAlert::parse(&body, None)?)
}

/// `POST /receivers/{receiver}/test`: queues a test alert (`kind: "test"`, or the one the body
/// describes), behind what waits.
pub async fn test(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let sample = sample_alert(&receiver, &body)?;
    // The designs as read with the settings (the test's duration is its design's).
    state.settings.get(&receiver).await?;
    let designs = state.settings.designs(&receiver);
    let record = sample.into_record_with(&designs);
    let position = match state.hub.publish(&record, None).await? {
        Publish::Accepted { position, .. } => position,
        Publish::QueueFull => return Err(ApiError::QueueFull),
        Publish::Duplicate { .. } | Publish::Held { .. } => {
            return Err(ApiError::of_control(crate::store::StoreError::Protocol(
                "a test alert was taken for a duplicate, or held".into(),
            )))
        }
    };
    let mut body = state_of(&state, &receiver).await?;
    body["id"] = json!(record.id);
    body["position"] = json!(position);
    Ok(HttpResponse::Accepted().json(body))
}

async fn control(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ControlQuery>,
    state: web::Data<AppState>,
    command: impl FnOnce(&ControlQuery) -> Command<'_>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let snapshot = state
        .hub
        .control(&receiver, command(&query))
        .await
        .map_err(ApiError::of_control)?;
    let mut body = state_of(&state, &receiver).await?;
    if let Some(id) = snapshot.skipped {
        body["skipped"] = json!(&*id);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// The receiver as the store holds it: paused or not, its queue, its alert in flight and its
/// live widgets.
async fn state_of(state: &AppState, receiver: &ReceiverId) -> Result<Value, ApiError> {
    let status = state.hub.store().status(receiver).await?;
    let in_flight = status
        .in_flight
        .as_deref()
        .and_then(|json| serde_json::from_str::<Value>(json).ok());
    // When the alert on screen was last sent and started, from its trail, with the server's
    // time, so a dock can show its progress whatever its own clock says.
    let showing = status.in_flight_trail.as_ref().map(|trail| {
        let steps = trail.steps();
        let last = |mark: Mark| steps.iter().rev().find(|s| s.mark == mark).map(|s| s.at);
        let sent_at = last(Mark::Sent);
        let started_at = last(Mark::Started).filter(|t| sent_at.is_none_or(|s| *t >= s));
        json!({"sent_at": sent_at, "started_at": started_at})
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(json!({
        "receiver": receiver,
        "now": now,
        "showing": showing,
        "paused": status.paused,
        "queued": status.queued,
        "held": status.held,
        "in_flight": in_flight,
        "widgets": status.widgets,
        "widgets_on_air": status.widgets_on_air,
        "previews": status.previews,
    }))
}
