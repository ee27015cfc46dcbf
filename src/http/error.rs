//! The one error type of the HTTP surface, and the JSON every error answers with:
//! `{"error": {"code", "message", "field"}}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::alert::FieldError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.message)]
    Invalid(FieldError),
    #[error("a valid publish key is required: Authorization: Bearer <key>")]
    Unauthorized,
    #[error(
        "a publish key or this receiver's dashboard token is required: Authorization: Bearer \
         <key or token>, or ?token=<token>"
    )]
    NotController,
    #[error("the widget token is missing or does not match the receiver")]
    BadToken,
    #[error("the body must be at most {0} bytes")]
    TooLarge(usize),
    #[error("the body did not arrive whole within {0} s")]
    BodyTimeout(f64),
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the receiver's queue is full; retry once it drains")]
    QueueFull,
    #[error("no such route")]
    NotFound,
    #[error(
        "no alert {0} is known here: not queued, held or in flight, and not in its receiver's \
         history (which keeps the newest alerts only)"
    )]
    AlertNotFound(String),
    #[error("the status link's signature does not match its alert")]
    BadSignature,
    #[error("the subscribe token does not hold: make one with `cuebox topic-token`")]
    BadTopicToken,
    #[error("topic {0} is neither public (--public-topics) nor granted by the subscribe token")]
    ForbiddenTopic(String),
    #[error("alert {0} is not in this receiver's history (it keeps the newest alerts only)")]
    NotInHistory(String),
    #[error("alert {0} is not held for approval (it may have been approved or denied already)")]
    NotHeld(String),
    #[error(
        "the designs changed since version {expected} was read: they are at version {newest}. \
         Read them again (GET), apply the change to what is there, and put it with that version"
    )]
    StaleVersion { expected: u64, newest: u64 },
    #[error("no speech for this alert: {0}")]
    NoSpeech(String),
    #[error("this is a WebSocket endpoint: connect with Upgrade: websocket")]
    UpgradeRequired,
    #[error("this publish key is over its rate; retry in {0} s")]
    RateLimited(u64),
    #[error("{0}; close one first")]
    TooManyWidgets(StoreError),
    #[error("this node holds as many widget connections as it may; try another node")]
    NodeFull,
    #[error("this address holds as many subscriber connections as it may; close one first")]
    AddressFull,
    #[error("this node is shutting down; try another node")]
    ShuttingDown,
    #[error("the store is unavailable; nothing was accepted, retry")]
    Unavailable(#[source] StoreError),
    #[error(
        "the store did not answer in time, so this may have taken effect: the alert may have been \
         queued. Retry with the same Idempotency-Key; a repeat is answered as a duplicate, never \
         queued twice"
    )]
    OutcomeUnknown(#[source] StoreError),
    #[error(
        "the store did not answer in time, so the change may have taken effect: read the \
         receiver (GET /receivers/{{receiver}}) before trying again"
    )]
    ChangeUnknown(#[source] StoreError),
}

impl ApiError {
    /// A store error under a control: an unknown outcome says to look before trying again,
    /// since a control (a skip, say) is not idempotent the way a publish with a key is.
    pub fn of_control(e: StoreError) -> Self {
        match e {
            StoreError::OutcomeUnknown(_) => ApiError::ChangeUnknown(e),
            e => e.into(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The store is atomic per call: a call either happened whole or not at all, and the
        // error says whether the node can know which.
        match e {
            StoreError::TooManyWidgets(_) => ApiError::TooManyWidgets(e),
            StoreError::OutcomeUnknown(_) => ApiError::OutcomeUnknown(e),
            StoreError::Unavailable(_) | StoreError::Protocol(_) => ApiError::Unavailable(e),
        }
    }
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(e) => e.code,
            ApiError::Unauthorized | ApiError::NotController => "unauthorized",
            ApiError::BadToken => "invalid_token",
            ApiError::BadSignature => "invalid_signature",
            ApiError::BadTopicToken => "invalid_token",
            ApiError::ForbiddenTopic(_) => "forbidden_topic",
            ApiError::AlertNotFound(_) => "alert_not_found",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::QueueFull => "queue_full",
            ApiError::NotFound => "not_found",
            ApiError::NotInHistory(_) => "not_in_history",
            ApiError::NotHeld(_) => "not_held",
            ApiError::StaleVersion { .. } => "version_conflict",
            ApiError::NoSpeech(_) => "speech_unavailable",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::TooManyWidgets(_) => "too_many_widgets",
            ApiError::NodeFull => "node_full",
            ApiError::AddressFull => "too_many_connections",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Unavailable(_) => "store_unavailable",
            ApiError::OutcomeUnknown(_) | ApiError::ChangeUnknown(_) => "outcome_unknown",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized
            | ApiError::NotController
            | ApiError::BadToken
            | ApiError::BadSignature
            | ApiError::BadTopicToken => StatusCode::UNAUTHORIZED,
            ApiError::ForbiddenTopic(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::QueueFull
            | ApiError::RateLimited(_)
            | ApiError::TooManyWidgets(_)
            | ApiError::AddressFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NodeFull | ApiError::ShuttingDown | ApiError::NoSpeech(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::NotFound
            | ApiError::NotInHistory(_)
            | ApiError::NotHeld(_)
            | ApiError::AlertNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::StaleVersion { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) | ApiError::OutcomeUnknown(_) | ApiError::ChangeUnknown(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Unavailable(cause) => tracing::warn!(error = %cause, "store unavailable"),
            ApiError::OutcomeUnknown(cause) | ApiError::ChangeUnknown(cause) => {
                tracing::warn!(error = %cause, "the store did not answer; outcome unknown")
            }
            _ => {}
        }
        let field = match self {
            ApiError::Invalid(e) => e.field.clone(),
            ApiError::StaleVersion { .. } => Some("version".to_owned()),
            _ => None,
        };
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized | ApiError::NotController => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::Unavailable(_)
            | ApiError::OutcomeUnknown(_)
            | ApiError::ChangeUnknown(_)
            | ApiError::QueueFull
            | ApiError::NodeFull
            | ApiError::ShuttingDown => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::UpgradeRequired => {
                res.insert_header((header::UPGRADE, "websocket"));
            }
            // The rest of the body may never come: the connection cannot carry another request.
            ApiError::BodyTimeout(_) => {
                res.force_close();
            }
            ApiError::RateLimited(secs) => {
                res.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            _ => {}
        }
        res.json(json!({
            "error": { "code": self.code(), "message": self.to_string(), "field": field }
        }))
    }
}
