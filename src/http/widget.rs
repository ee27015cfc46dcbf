//! `GET /ws/{receiver}?token=T`: one widget's WebSocket.
//!
//! Each connection is one `select!` loop over the widget's frames, the hub's frames for it, a
//! heartbeat and shutdown, with one way out: whatever ends the loop, the widget leaves the hub
//! exactly once, after it.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::pages::TokenQuery;
use super::{ApiError, AppState};
use crate::alert::ReceiverId;
use crate::hub::{Frame, Hub, Widget};

/// The server pings this often; a widget silent for [`SILENCE`] is dropped.
const PING_EVERY: Duration = Duration::from_secs(15);
const SILENCE: Duration = Duration::from_secs(45);
/// Widgets send small control frames; anything bigger is not a widget.
const MAX_FRAME: usize = 4 * 1024;
/// Longest alert id a widget may name; ids are UUIDs.
const MAX_ID: usize = 64;
/// How long one frame may wait to be taken by a widget's socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a widget may send.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Inbound {
    Started { id: String },
    Done { id: String },
    Ping,
}

pub fn check_token(
    state: &AppState,
    receiver: &ReceiverId,
    token: Option<&str>,
) -> Result<(), ApiError> {
    match token {
        Some(t) if state.tokens.verify(receiver, t) => Ok(()),
        _ => Err(ApiError::BadToken),
    }
}

pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let receiver = ReceiverId::parse(&path).map_err(ApiError::from)?;
    // Everything that can refuse a widget does so before the upgrade, with a status the
    // widget's backoff understands: a bad token, a full node, a receiver with too many widgets,
    // a store that cannot count it.
    check_token(&state, &receiver, query.token.as_deref())?;
    if *state.shutdown.borrow() {
        return Err(ApiError::ShuttingDown.into());
    }
    let connection = state.connections.admit().ok_or(ApiError::NodeFull)?;
    let widget = state.hub.join(&receiver).await.map_err(ApiError::from)?;
    let (response, session, stream) = match actix_ws::handle(&req, body) {
        Ok(upgraded) => upgraded,
        Err(e) => {
            state.hub.leave(&widget, false).await;
            return Err(e);
        }
    };
    let stream = stream
        .max_frame_size(MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME);
    let hub = state.hub.clone();
    let shutdown = state.shutdown.clone();
    actix_web::rt::spawn(async move {
        run(hub, widget, session, stream, shutdown).await;
        drop(connection);
    });
    Ok(response)
}

#[tracing::instrument(name = "widget", skip_all, fields(receiver = %widget.receiver))]
async fn run(
    hub: std::sync::Arc<Hub>,
    mut widget: Widget,
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let receiver = widget.receiver.clone();
    let hello = json!({ "type": "hello", "receiver": receiver, "protocol": 1 }).to_string();
    if session.text(hello).await.is_err() {
        hub.leave(&widget, false).await;
        return;
    }
    tracing::debug!(widget = widget.id, "widget joined");

    let mut heard = Instant::now();
    let mut withdrawn = false;
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + first_ping(widget.id), PING_EVERY);
    let close = loop {
        tokio::select! {
            inbound = stream.recv() => match inbound {
                Some(Ok(AggregatedMessage::Text(text))) => {
                    heard = Instant::now();
                    if let Some(reply) = handle(&hub, &receiver, &text).await {
                        if session.text(reply).await.is_err() {
                            break None;
                        }
                    }
                }
                Some(Ok(AggregatedMessage::Binary(_))) => {
                    heard = Instant::now();
                    let reply = error_frame("invalid_frame", "frames are JSON text");
                    if session.text(reply).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    heard = Instant::now();
                    if session.pong(&bytes).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => heard = Instant::now(),
                // Echo the widget's close, as the protocol asks.
                Some(Ok(AggregatedMessage::Close(reason))) => break reason,
                None => break None,
                Some(Err(ProtocolError::Overflow)) => {
                    break Some(reason(CloseCode::Size, "frame too large"));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "widget protocol error");
                    break Some(reason(CloseCode::Protocol, "protocol error"));
                }
            },
            frame = widget.frames.next() => match frame {
                // A widget that stops reading fills its socket; it gets a while to drain, then
                // is closed rather than held with its frames in memory.
                Some(frame) => match tokio::time::timeout(SEND_TIMEOUT, session.text(frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => break Some(reason(CloseCode::Again, "too slow")),
                },
                // The hub let go of this widget: it fell too far behind.
                None => break Some(reason(CloseCode::Again, "too slow")),
            },
            _ = heartbeat.tick() => {
                if heard.elapsed() > SILENCE {
                    break Some(reason(CloseCode::Away, "silent too long"));
                }
                if session.ping(b"").await.is_err() {
                    break None;
                }
            }
            _ = shutdown.changed() => {
                withdrawn = true;
                break Some(reason(CloseCode::Restart, "node shutting down"));
            }
        }
    };
    // Fails harmlessly when the socket is already gone.
    let _ = session.close(close).await;
    hub.leave(&widget, withdrawn).await;
    tracing::debug!(widget = widget.id, "widget left");
}

/// Acts on one text frame; the answer, if any, goes back to this widget only.
async fn handle(hub: &Hub, receiver: &ReceiverId, text: &str) -> Option<Frame> {
    let inbound = match serde_json::from_str::<Inbound>(text) {
        Ok(i) => i,
        Err(e) => {
            return Some(error_frame(
                "invalid_frame",
                &format!("expected {{\"type\":\"started\"|\"done\"|\"ping\", ...}}: {e}"),
            ))
        }
    };
    let (id, result) = match &inbound {
        Inbound::Ping => return Some(r#"{"type":"pong"}"#.into()),
        Inbound::Started { id } | Inbound::Done { id } if id.len() > MAX_ID => {
            return Some(error_frame("invalid_frame", "id is too long"));
        }
        Inbound::Started { id } => (id, hub.started(receiver, id).await),
        Inbound::Done { id } => (id, hub.done(receiver, id).await),
    };
    // A lost `started` or `done` costs no alert: the deadline resends or expires it.
    result.err().map(|e| {
        tracing::warn!(alert_id = %id, error = %e, "could not record a widget's report");
        error_frame(
            "store_unavailable",
            "the store is unavailable; the report was not recorded",
        )
    })
}

/// When a widget is first pinged: one period after it joined, plus a share of another period
/// that differs from widget to widget. Widgets that joined together (every OBS reconnecting after
/// a node restart) would otherwise be pinged together forever, in bursts of thousands of frames
/// that delay the alerts sent beside them.
fn first_ping(widget: u64) -> Duration {
    // Widget ids count up; a large odd step scatters neighbours over the period.
    let spread = widget.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1000;
    PING_EVERY + PING_EVERY.mul_f64(spread as f64 / 1000.0)
}

fn error_frame(code: &str, message: &str) -> Frame {
    json!({ "type": "error", "code": code, "message": message })
        .to_string()
        .into()
}

fn reason(code: CloseCode, description: &str) -> CloseReason {
    CloseReason {
        code,
        description: Some(description.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widgets_that_join_together_are_first_pinged_at_different_times_within_a_period() {
        let firsts: Vec<Duration> = (1..=1000).map(first_ping).collect();
        assert!(firsts
            .iter()
            .all(|d| *d >= PING_EVERY && *d < PING_EVERY * 2));
        // Neighbouring ids land apart, and the spread covers the period rather than a corner.
        assert!(firsts.windows(2).all(|w| w[0] != w[1]));
        let early = firsts.iter().filter(|d| **d < PING_EVERY * 3 / 2).count();
        assert!(
            (400..=600).contains(&early),
            "{early} of 1000 in the first half"
        );
    }
}
