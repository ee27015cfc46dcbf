//! Where an alert is, and how soon it shows: `GET /alerts/{id}` for the platform (publish key),
//! and the status a donor follows from the publish answer's `status_url`, signed for that one
//! alert and read-only.
//!
//! The store says where the alert is and how soon it can show, gaps aside
//! ([`crate::store::machine::Eta`]); this adds the gap the receiver's widgets keep after each
//! alert ahead of it (its designs' `alert_gap_ms`, else the node's `--alert-gap-ms`).

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize_publisher, ApiError, AppState};
use crate::alert::ReceiverId;
use crate::store::machine::{Eta, Whereabouts};
use crate::store::AlertWhere;

const STATUS_HTML: &str = include_str!("../../widget/status.html");

/// A publish's `eta_ms` and, when there is none, what the alert waits for.
pub fn eta_fields(position: u64, eta: Eta, gap: Duration) -> (Value, Option<&'static str>) {
    match eta {
        Eta::In(ms) => {
            let gaps = gap.as_millis() as u64 * position;
            (json!(ms + gaps), None)
        }
        Eta::Paused => (Value::Null, Some("resume")),
        Eta::NoAudience => (Value::Null, Some("widget")),
    }
}

/// The gap widgets keep after each alert of a receiver with these designs.
pub fn gap(state: &AppState, designs: &crate::design::Designs) -> Duration {
    designs.gap().unwrap_or_else(|| state.hub.default_gap())
}

/// The gap the receiver's widgets keep after each alert, its designs read if need be.
async fn gap_of(state: &AppState, receiver: &ReceiverId) -> Result<Duration, ApiError> {
    state.settings.get(receiver).await?;
    Ok(gap(state, &state.settings.designs(receiver)))
}

/// The read-only link to one alert's status, for the donor: on the host the request came to.
pub fn status_url(req: &HttpRequest, state: &AppState, receiver: &ReceiverId, id: &str) -> String {
    let info = req.connection_info();
    format!(
        "{}://{}/alerts/{id}/status?receiver={receiver}&sig={}",
        info.scheme(),
        info.host(),
        state.tokens.alert_signature(receiver, id)
    )
}

/// `{"id","receiver","status","position","eta_ms","shown_at"}`, and `waiting_for` while an
/// alert in line cannot say when it shows (`resume`, `widget`, `approval`).
async fn describe(
    state: &AppState,
    receiver: &ReceiverId,
    id: &str,
    found: AlertWhere,
) -> Result<Value, ApiError> {
    let (status, position, eta_ms, shown_at, waiting_for) = match found {
        AlertWhere::Here(Whereabouts::Queued { position, eta }) => {
            let (eta_ms, waiting_for) = eta_fields(position, eta, gap_of(state, receiver).await?);
            ("queued", json!(position), eta_ms, Value::Null, waiting_for)
        }
        AlertWhere::Here(Whereabouts::Held) => (
            "held",
            Value::Null,
            Value::Null,
            Value::Null,
            Some("approval"),
        ),
        AlertWhere::Here(Whereabouts::InFlight { started_at }) => {
            ("in_flight", json!(0), json!(0), json!(started_at), None)
        }
        AlertWhere::Ended { status, shown_at } => (
            status.name(),
            Value::Null,
            Value::Null,
            json!(shown_at),
            None,
        ),
    };
    let mut body = json!({
        "id": id,
        "receiver": receiver,
        "status": status,
        "position": position,
        "eta_ms": eta_ms,
        "shown_at": shown_at,
    });
    if let Some(why) = waiting_for {
        body["waiting_for"] = json!(why);
    }
    Ok(body)
}

/// `GET /alerts/{id}` with a publish key: the receiver is found from the route the id carries.
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize_publisher(&req, &state.publish_keys)?;
    let id = path.into_inner();
    let not_found = || ApiError::AlertNotFound(id.clone());
    let route = crate::alert::route_of(&id).ok_or_else(not_found)?;
    let store = state.hub.store();
    let routed = store.routed(route).await.map_err(ApiError::of_control)?;
    for receiver in routed {
        if crate::alert::route(&receiver) != route {
            continue;
        }
        if let Some(found) = store
            .whereabouts(&receiver, &id)
            .await
            .map_err(ApiError::of_control)?
        {
            let body = describe(&state, &receiver, &id, found).await?;
            return Ok(no_store(HttpResponse::Ok()).json(body));
        }
    }
    Err(not_found())
}

#[derive(Deserialize)]
pub struct StatusQuery {
    receiver: Option<String>,
    sig: Option<String>,
}

/// The receiver a status link names, if its signature is this alert's.
fn signed(state: &AppState, id: &str, q: &StatusQuery) -> Result<ReceiverId, ApiError> {
    let receiver = q
        .receiver
        .as_deref()
        .and_then(|r| ReceiverId::parse(r).ok())
        .ok_or(ApiError::BadSignature)?;
    let sig = q.sig.as_deref().ok_or(ApiError::BadSignature)?;
    match state.tokens.verify_alert(&receiver, id, sig) {
        true => Ok(receiver),
        false => Err(ApiError::BadSignature),
    }
}

/// `GET /alerts/{id}/status.json?receiver=R&sig=S`: what the donor's page shows, and nothing of
/// any other alert.
pub async fn status_json(
    path: web::Path<String>,
    query: web::Query<StatusQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let receiver = signed(&state, &id, &query)?;
    let found = state
        .hub
        .store()
        .whereabouts(&receiver, &id)
        .await
        .map_err(ApiError::of_control)?
        .ok_or_else(|| ApiError::AlertNotFound(id.clone()))?;
    let body = describe(&state, &receiver, &id, found).await?;
    Ok(no_store(HttpResponse::Ok()).json(body))
}

/// `GET /alerts/{id}/status?receiver=R&sig=S`: the donor's page. It reads `status.json` as it
/// changes and counts the wait down in between; a tampered link is 401, with the page saying so.
pub async fn status_page(
    path: web::Path<String>,
    query: web::Query<StatusQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let refused = signed(&state, &path, &query).is_err();
    let mut response = match refused {
        false => HttpResponse::Ok(),
        true => HttpResponse::Unauthorized(),
    };
    let body = match refused {
        false => STATUS_HTML.to_owned(),
        true => STATUS_HTML.replacen("<body>", "<body data-refused=\"signature\">", 1),
    };
    response
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CONTENT_SECURITY_POLICY, super::pages::CSP))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(body)
}

fn no_store(mut res: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    res.insert_header((header::CACHE_CONTROL, "no-store"));
    res
}
