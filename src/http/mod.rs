//! The HTTP surface: routes, the state every handler shares, and authorization.

mod alerts;
mod controls;
mod designs;
mod error;
mod feed;
mod health;
mod pages;
mod publish;
pub(crate) mod socket;
mod token;
mod topics;
mod widget;
mod wire;

use std::sync::Arc;

use actix_web::{web, HttpRequest};
use tokio::sync::watch;

pub use error::ApiError;

use crate::alert::FieldError;
use crate::auth::{PublishKeys, ReceiverTokens};
use crate::hub::Hub;
use crate::limits::{Connections, PublishRate};
use crate::metrics::Metrics;
use crate::moderation::SettingsCache;

/// What every handler can reach.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub publish_keys: PublishKeys,
    pub tokens: ReceiverTokens,
    pub publish_rate: PublishRate,
    pub connections: Connections,
    /// How long a request body may take to arrive whole.
    pub body_timeout: std::time::Duration,
    pub metrics: Arc<Metrics>,
    /// Becomes true when the node shuts down; widget connections close on it.
    pub shutdown: watch::Receiver<bool>,
    /// Widgets refused for a bad token, for the log.
    pub refusals: token::Refusals,
    /// Receivers' moderation settings, applied at publish.
    pub settings: Arc<SettingsCache>,
    /// The speech of alerts, made here for this node's widgets.
    pub speech: Arc<crate::speech::Speech>,
    /// Where broadcast topics keep their recent messages.
    pub topic_log: Arc<dyn crate::topics::TopicLog>,
    /// Topics anyone may subscribe to (`--public-topics`).
    pub public_topics: Vec<crate::topics::Pattern>,
    /// Subscriber connections from each address (`--max-connections-per-ip`).
    pub per_address: crate::limits::PerAddress,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    // A query string actix cannot decode still gets cuebox's JSON error, not a bare 400.
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        ApiError::Invalid(FieldError {
            code: "invalid_query",
            message: format!("the query string is not valid: {e}"),
            field: None,
        })
        .into()
    }))
    .route("/publish", web::post().to(publish::publish))
    .route("/broadcast", web::post().to(topics::broadcast))
    .route("/ws/topics", web::get().to(topics::connect))
    .route("/client.js", web::get().to(topics::client_script))
    .route("/toasts", web::get().to(topics::toasts_page))
    .route("/alerts/{id}", web::get().to(alerts::get))
    .route("/alerts/{id}/status", web::get().to(alerts::status_page))
    .route(
        "/alerts/{id}/status.json",
        web::get().to(alerts::status_json),
    )
    .route("/receivers/{receiver}", web::get().to(controls::status))
    .route(
        "/receivers/{receiver}/pause",
        web::post().to(controls::pause),
    )
    .route(
        "/receivers/{receiver}/resume",
        web::post().to(controls::resume),
    )
    .route("/receivers/{receiver}/skip", web::post().to(controls::skip))
    .route(
        "/receivers/{receiver}/queue",
        web::delete().to(controls::clear),
    )
    .route(
        "/receivers/{receiver}/queue",
        web::get().to(controls::queue),
    )
    .route("/receivers/{receiver}/test", web::post().to(controls::test))
    .route(
        "/receivers/{receiver}/history",
        web::get().to(controls::history),
    )
    .route(
        "/receivers/{receiver}/replay/{id}",
        web::post().to(controls::replay),
    )
    .route(
        "/receivers/{receiver}/approve/{id}",
        web::post().to(controls::approve),
    )
    .route(
        "/receivers/{receiver}/deny/{id}",
        web::post().to(controls::deny),
    )
    .route(
        "/receivers/{receiver}/tokens/rotate",
        web::post().to(controls::rotate),
    )
    .route(
        "/receivers/{receiver}/settings",
        web::get().to(controls::get_settings),
    )
    .route("/receivers/{receiver}/designs", web::get().to(designs::get))
    .route("/receivers/{receiver}/designs", web::put().to(designs::put))
    .route(
        "/receivers/{receiver}/designs/versions",
        web::get().to(designs::versions),
    )
    .route(
        "/receivers/{receiver}/designs/preview",
        web::post().to(designs::preview),
    )
    .route(
        "/receivers/{receiver}/settings",
        web::put().to(controls::put_settings),
    )
    // HEAD as well as GET: load balancers probe with either.
    .route("/healthz", web::get().to(health::healthz))
    .route("/healthz", web::head().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/readyz", web::head().to(health::readyz))
    .route("/metrics", web::get().to(health::metrics))
    .route("/ws/{receiver}", web::get().to(widget::connect))
    .route("/ws/{receiver}/feed", web::get().to(feed::connect))
    .route("/widget/{receiver}", web::get().to(pages::widget_page))
    .route("/widget-assets/{file}", web::get().to(pages::widget_asset))
    .route("/speech/{key}", web::get().to(pages::speech))
    .route("/dock/{receiver}", web::get().to(pages::dock_page))
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound)
    }));
}

/// What `Authorization: Bearer ...` presents, if anything.
fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Checks `Authorization: Bearer <publish key>`; answers which key it is.
fn authorize_publisher(req: &HttpRequest, keys: &PublishKeys) -> Result<usize, ApiError> {
    bearer(req)
        .and_then(|key| keys.find(key))
        .ok_or(ApiError::Unauthorized)
}
