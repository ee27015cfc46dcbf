//! `GET /receivers/{receiver}`: a receiver's queue as the store holds it.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{authorize_publisher, ApiError, AppState};
use crate::alert::ReceiverId;

pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize_publisher(&req, &state.publish_keys)?;
    let receiver = ReceiverId::parse(&path)?;
    let status = state.hub.store().status(&receiver).await?;
    let in_flight = status
        .in_flight
        .as_deref()
        .and_then(|json| serde_json::from_str::<Value>(json).ok());
    Ok(HttpResponse::Ok().json(json!({
        "receiver": receiver,
        "queued": status.queued,
        "in_flight": in_flight,
        "widgets": status.widgets,
    })))
}
