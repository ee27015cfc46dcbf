//! `GET` and `PUT /receivers/{r}/designs`: how the receiver's widget shows each kind of alert
//! (`crate::design`), with a publish key or the receiver's dashboard token. Every put is a new
//! version; widgets on every node show the next alert with it, with no reload.

use std::time::{Duration, SystemTime};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::controls::controlled;
use super::publish::read_body;
use super::{ApiError, AppState};
use crate::alert::ReceiverId;
use crate::design::Put;
use crate::store::{DesignsPut, Versioned, DESIGN_VERSIONS_KEPT};

/// A put's body, at most: every kind's design with its CSS, and some variations.
pub const MOST_DESIGNS_BYTES: usize = 512 * 1024;

#[derive(Deserialize)]
pub struct DesignsQuery {
    token: Option<String>,
    /// An earlier version to read, while the store keeps it.
    version: Option<u64>,
}

fn at(ms: u64) -> String {
    let when = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(when).to_string()
}

/// The answer for one version: the designs as kept (version 0, none, before the first put).
fn answer(receiver: &ReceiverId, kept: Option<&Versioned>) -> Result<Value, ApiError> {
    let Some(v) = kept else {
        return Ok(json!({"receiver": receiver, "version": 0, "updated_at": null, "designs": {}}));
    };
    let mut body: Value = serde_json::from_str(&v.json)
        .map_err(|e| ApiError::Unavailable(crate::store::StoreError::Protocol(e.to_string())))?;
    body["receiver"] = json!(receiver);
    body["version"] = json!(v.version);
    body["updated_at"] = json!(at(v.at_ms));
    Ok(body)
}

/// `GET /receivers/{receiver}/designs[?version=N]`: the newest designs, or an earlier version.
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<DesignsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let limit = if query.version.is_some() {
        DESIGN_VERSIONS_KEPT
    } else {
        1
    };
    let kept = state.hub.store().designs(&receiver, limit).await?;
    let body = match query.version {
        None => answer(&receiver, kept.first())?,
        Some(0) => answer(&receiver, None)?,
        Some(n) => match kept.iter().find(|v| v.version == n) {
            Some(v) => answer(&receiver, Some(v))?,
            None => return Err(ApiError::NotFound),
        },
    };
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /receivers/{receiver}/designs/versions`: the versions kept, newest first.
pub async fn versions(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<DesignsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let kept = state
        .hub
        .store()
        .designs(&receiver, DESIGN_VERSIONS_KEPT)
        .await?;
    let versions: Vec<Value> = kept
        .iter()
        .map(|v| json!({"version": v.version, "updated_at": at(v.at_ms)}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"receiver": receiver, "versions": versions})))
}

/// `PUT /receivers/{receiver}/designs`: replaces the designs whole, as a new version. With
/// `"version": N` in the body, only if N is still the newest (else 409).
pub async fn put(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<DesignsQuery>,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    let body = read_body(&mut body, 4096, MOST_DESIGNS_BYTES, state.body_timeout).await?;
    let Put { designs, expected } = Put::parse(&body)?;
    let json = designs.to_json();
    let put = state
        .hub
        .store()
        .put_designs(&receiver, &json, expected)
        .await
        .map_err(ApiError::of_control)?;
    let version = match put {
        DesignsPut::Kept(v) => v,
        DesignsPut::Stale(newest) => {
            return Err(ApiError::StaleVersion {
                expected: expected.unwrap_or_default(),
                newest,
            })
        }
    };
    // This node's widgets and publishes take them at once, as put (no read back); other nodes
    // hear of them from the store (publishes there within `SETTINGS_FRESH`).
    state.hub.use_designs(&receiver, version, designs.clone());
    state.settings.designs_put(&receiver, designs.clone());
    let mut body = serde_json::to_value(&designs).unwrap_or_default();
    body["receiver"] = json!(receiver);
    body["version"] = json!(version);
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /receivers/{receiver}/designs/preview`: `{"designs", "alert"}`, designs not yet put and
/// a sample alert (as `POST .../test` takes it), answered with the alert as a widget would get
/// it and the look it resolves to: what the dock's editor draws with the real widget code.
pub async fn preview(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<DesignsQuery>,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let receiver = controlled(&req, &path, query.token.as_deref(), &state).await?;
    // The designs, and a sample alert beside them.
    let limit = MOST_DESIGNS_BYTES + 16 * 1024;
    let body = read_body(&mut body, 4096, limit, state.body_timeout).await?;
    let mut asked: Value = serde_json::from_slice(&body).map_err(|e| crate::alert::FieldError {
        code: "invalid_json",
        message: format!("the body is not valid JSON: {e}"),
        field: None,
    })?;
    let designs = asked
        .get_mut("designs")
        .map(Value::take)
        .unwrap_or(json!({}));
    let designs = Put::parse(designs.to_string().as_bytes())?.designs;
    let alert = asked
        .get_mut("alert")
        .map(Value::take)
        .unwrap_or(Value::Null);
    let sample = match alert {
        Value::Null => Vec::new(),
        alert => alert.to_string().into_bytes(),
    };
    let record = super::controls::sample_alert(&receiver, &sample)?.into_record_with(&designs);
    let alert: Value = serde_json::from_str(&record.json).unwrap_or_default();
    let look = designs.resolve(&alert);
    Ok(HttpResponse::Ok().json(json!({"alert": alert, "design": look})))
}
