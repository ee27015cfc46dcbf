//! `POST /publish`: a platform hands cuebox an alert for a receiver.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::alerts::{eta_fields, gap, status_url};
use super::{authorize_publisher, ApiError, AppState};
use crate::alert::NewAlert;
use crate::metrics::PublishOutcome;
use crate::moderation::{moderate, Verdict};
use crate::store::machine::Whereabouts;
use crate::store::Publish;

/// Marks the answer to a publish that moderation filtered, for the metrics.
const FILTERED: &str = "x-cuebox-filtered";

/// Bodies past this are refused with 413 before they are read whole.
pub const MAX_BODY: usize = 64 * 1024;

#[tracing::instrument(name = "publish", skip_all, fields(receiver, alert_id))]
pub async fn publish(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let answer = accept(req, body, &state).await;
    let outcome = match &answer {
        Ok(res) if res.status() == StatusCode::ACCEPTED && res.headers().contains_key(FILTERED) => {
            Some(PublishOutcome::Filtered)
        }
        Ok(res) if res.status() == StatusCode::ACCEPTED => Some(PublishOutcome::Published),
        Ok(_) => Some(PublishOutcome::Duplicate),
        Err(ApiError::QueueFull) => Some(PublishOutcome::Refused),
        Err(_) => None,
    };
    if let Some(outcome) = outcome {
        state.metrics.publish(outcome, started.elapsed());
    }
    answer
}

async fn accept(
    req: HttpRequest,
    mut body: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    admit_publisher(&req, state)?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    let capacity = declared.unwrap_or(1024).min(MAX_BODY);
    // A body trickled in a byte at a time would hold the socket for as long as the client liked;
    // actix bounds how long headers may take, not the body.
    let bytes = read_body(&mut body, capacity, MAX_BODY, state.body_timeout).await?;

    let header_key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str())
        .transpose()
        .map_err(|_| {
            ApiError::Invalid(crate::alert::FieldError {
                code: "invalid_field",
                message: "the Idempotency-Key header must be visible ASCII".into(),
                field: Some("idempotency_key".into()),
            })
        })?;
    let mut alert = NewAlert::parse(&bytes, header_key)?;
    let settings = state.settings.get(&alert.receiver).await?;
    if let Verdict::Filtered(why) = moderate(&settings, &mut alert) {
        // Taken, and never to be shown: the platform has nothing to retry.
        let record = alert.into_record();
        tracing::debug!(receiver = %record.receiver, why, "alert filtered");
        state.hub.filtered(&record).await?;
        return Ok(HttpResponse::Accepted()
            .insert_header((FILTERED, why))
            .json(json!({
                "id": record.id,
                "receiver": record.receiver,
                "position": null,
                "duplicate": false,
                "filtered": why,
            })));
    }
    let idempotency_key = alert.idempotency_key.clone();
    let designs = state.settings.designs(&alert.receiver);
    let record = alert.into_record_with(&designs);
    let span = tracing::Span::current();
    span.record("receiver", record.receiver.as_str());
    span.record("alert_id", record.id.as_str());

    match state
        .hub
        .admit(&record, idempotency_key.as_deref(), settings.hold())
        .await?
    {
        Publish::Held { .. } => {
            tracing::debug!("alert held for approval");
            Ok(HttpResponse::Accepted().json(json!({
                "id": record.id,
                "receiver": record.receiver,
                "position": null,
                "duplicate": false,
                "held": true,
                "eta_ms": null,
                "waiting_for": "approval",
                "status_url": status_url(&req, state, &record.receiver, &record.id),
            })))
        }
        Publish::Accepted { position, eta, .. } => {
            tracing::debug!(position, "alert queued");
            let gap = gap(state, &designs);
            let mut body = Answer::new(&req, state, &record.id, &record, position, false);
            (body.eta_ms, body.waiting_for) = eta_fields(position, eta, gap);
            Ok(HttpResponse::Accepted().json(body))
        }
        Publish::Duplicate { id, position } => {
            // A retry: how soon the first alert shows, as it stands now.
            let mut body = Answer::new(&req, state, &id, &record, position, true);
            let found = state.hub.store().locate(&record.receiver, &id).await;
            (body.eta_ms, body.waiting_for) = match found {
                Ok(Some(Whereabouts::Queued { position, eta })) => {
                    body.position = position;
                    eta_fields(position, eta, gap(state, &designs))
                }
                Ok(Some(Whereabouts::InFlight { .. })) => (0.into(), None),
                Ok(Some(Whereabouts::Held)) => (Value::Null, Some("approval")),
                // Gone by now (shown, or it ended otherwise), or not known this instant.
                Ok(None) | Err(_) => (Value::Null, None),
            };
            Ok(HttpResponse::Ok().json(body))
        }
        Publish::QueueFull => Err(ApiError::QueueFull),
    }
}

/// What `POST /publish` and `POST /broadcast` ask first: a publish key, within its rate, and a
/// JSON body.
pub(super) fn admit_publisher(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let key = authorize_publisher(req, &state.publish_keys)?;
    if let Err(wait) = state.publish_rate.take(key) {
        return Err(ApiError::RateLimited(
            wait.as_secs_f64().ceil().max(1.0) as u64
        ));
    }
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(())
}

/// Reads a body of at most `limit` bytes within `timeout`: a larger one is 413, a slower one 408,
/// each with cuebox's JSON error (actix's own extractors answer in plain text).
pub(super) async fn read_body(
    body: &mut web::Payload,
    capacity: usize,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<web::BytesMut, ApiError> {
    let read = async {
        let mut bytes = web::BytesMut::with_capacity(capacity.min(limit));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::Invalid(crate::alert::FieldError {
                    code: "invalid_body",
                    message: format!("the body could not be read: {e}"),
                    field: None,
                })
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::TooLarge(limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout.as_secs_f64()))?
}

/// What a publish that queued an alert, or found it queued, answers. Written straight from this
/// (every publish makes one), its fields in the order a JSON map would sort them.
#[derive(serde::Serialize)]
struct Answer<'a> {
    duplicate: bool,
    /// A number, or null with `waiting_for` saying why.
    eta_ms: Value,
    id: &'a str,
    position: u64,
    receiver: &'a crate::alert::ReceiverId,
    status_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<&'static str>,
}

impl<'a> Answer<'a> {
    fn new(
        req: &HttpRequest,
        state: &AppState,
        id: &'a str,
        record: &'a crate::alert::AlertRecord,
        position: u64,
        duplicate: bool,
    ) -> Self {
        Answer {
            duplicate,
            eta_ms: Value::Null,
            id,
            position,
            receiver: &record.receiver,
            status_url: status_url(req, state, &record.receiver, id),
            waiting_for: None,
        }
    }
}
