//! `GET /ws/{receiver}?token=T`: one widget's WebSocket.
//!
//! The connection is served as a broadcast subscriber's is (`http::wire`): the response reads
//! the widget's frames from the hub itself and writes each as it comes, so an alert wakes one
//! thing per widget, and a widget holds no session channel. The connection's task answers what
//! the widget sends, pings it, and closes it, with one way out: whatever ends its loop, the
//! widget leaves the hub exactly once, after it. A widget that stops reading is closed: by the
//! hub letting it go when its frames pile up, or by its answers waiting too long (see
//! [`wire::Wire::send`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason, Message, ProtocolError};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::token::{check_token, Opening, TokenQuery};
use super::wire::{self, not_an_upgrade, reason, PING_EVERY};
use super::{ApiError, AppState};
use crate::alert::ReceiverId;
use crate::hub::{Hub, Seat};
use crate::moderation::SettingsCache;

/// Longest alert id a widget may name; ids are UUIDs.
const MAX_ID: usize = 64;

/// What a widget may send.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Inbound {
    Started {
        id: String,
    },
    Done {
        id: String,
    },
    /// OBS showed or hid the widget's scene (the page's `obsSourceActiveChanged`).
    Active {
        active: bool,
    },
    Ping,
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
    let preview = query.preview.as_deref() == Some("1");
    check_token(
        &state,
        &receiver,
        query.token.as_deref(),
        Opening::Socket,
        preview,
    )
    .await?;
    // Before anything reaches the store: a plain GET would otherwise count a widget in and out,
    // and send the alert in flight again with one more attempt.
    actix_http::ws::verify_handshake(req.head()).map_err(not_an_upgrade)?;
    if *state.shutdown.borrow() {
        return Err(ApiError::ShuttingDown.into());
    }
    let connection = state.connections.admit().ok_or(ApiError::NodeFull)?;
    // A widget that reconnects off air joins off air, so nothing goes out to it meanwhile;
    // only for a receiver that holds alerts while inactive (see `Inbound::Active`).
    let off_air = query.active.as_deref() == Some("0")
        && !preview
        && state
            .settings
            .get(&receiver)
            .await
            .map_or(true, |s| s.hold_while_inactive);
    let widget = state
        .hub
        .join_as(&receiver, preview, !off_air)
        .await
        .map_err(ApiError::from)?;
    let seat = widget.seat;
    // Set by the task as it leaves the hub, which ends the frames: the close is then the task's.
    let leaving = Arc::new(AtomicBool::new(false));
    // The hub's word that the token was rotated closes the connection with 4001; the end of the
    // frames closes it as too slow (the hub let the widget go, too far behind), unless the task
    // ended them by leaving.
    let left = leaving.clone();
    let live = widget
        .frames
        .map(wire::frame_or_revoked)
        .chain(futures_util::stream::once(async move {
            if left.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
            Message::Close(Some(reason(CloseCode::Again, "too slow")))
        }));
    // Never written: the frames end with a close of their own (above).
    let unreached = reason(CloseCode::Again, "too slow");
    let (response, mut wire, inbound) = match wire::upgrade(&req, body, Box::pin(live), unreached) {
        Ok(upgraded) => upgraded,
        Err(e) => {
            state.hub.leave(&seat, false).await;
            return Err(e);
        }
    };
    // Queued before the response is first read, so it goes out before any alert (the queue is
    // new: there is room).
    let hello = json!({ "type": "hello", "receiver": receiver, "protocol": 1 }).to_string();
    let _ = wire.send(Message::Text(hello.into())).await;
    let mut client = Connected {
        hub: state.hub.clone(),
        settings: state.settings.clone(),
        widget: seat,
        leaving,
    };
    let shutdown = state.shutdown.clone();
    let span = tracing::info_span!("widget", receiver = %receiver);
    // Served from this task directly: each async fn between it and `wire::serve` would keep its
    // own copy of the wire and the inbound frames for the connection's whole life.
    actix_web::rt::spawn(
        async move {
            tracing::debug!(widget = client.widget.id, "widget joined");
            wire::serve(wire, inbound, shutdown, &mut client).await;
            tracing::debug!(widget = client.widget.id, "widget left");
            drop(connection);
        }
        .instrument(span),
    );
    Ok(response)
}

/// A widget as `wire::serve` serves it.
struct Connected {
    hub: Arc<Hub>,
    settings: Arc<SettingsCache>,
    widget: Seat,
    leaving: Arc<AtomicBool>,
}

impl wire::Client for Connected {
    async fn answer(&mut self, text: &str) -> Option<String> {
        handle(&self.hub, &self.settings, &self.widget, text).await
    }

    /// Let go by the hub for falling behind.
    fn held(&self) -> bool {
        self.hub.holds(&self.widget)
    }

    fn binary(&self) -> Option<String> {
        Some(error_frame("invalid_frame", "frames are JSON text"))
    }

    fn first_ping(&self) -> Duration {
        first_ping(self.widget.id)
    }

    /// As actix-ws answered widgets before: text that is not UTF-8 is a protocol error, a frame
    /// too large is refused as such.
    fn refuse(&self, broken: wire::Broken<'_>) -> Option<CloseReason> {
        match broken {
            wire::Broken::Protocol(ProtocolError::Overflow) => {
                Some(reason(CloseCode::Size, "frame too large"))
            }
            wire::Broken::Protocol(e) => {
                tracing::debug!(error = %e, "widget protocol error");
                Some(reason(CloseCode::Protocol, "protocol error"))
            }
            wire::Broken::NotUtf8 => Some(reason(CloseCode::Protocol, "protocol error")),
        }
    }

    /// Counted out before the socket closes: a stopping node's worker may end as soon as its
    /// last socket has closed, and a withdrawal it never recorded would leave a report of a
    /// widget that is gone (a reconnecting widget, told of the close, also finds it recorded).
    async fn ending(&mut self, withdrawn: bool) {
        self.leaving.store(true, Ordering::Release);
        // Unboxed: `wire::serve` boxes the whole ending.
        self.hub.leave(&self.widget, withdrawn).await;
    }
}

/// Acts on one text frame; the answer, if any, goes back to this widget only.
async fn handle(
    hub: &Hub,
    settings: &Arc<SettingsCache>,
    widget: &Seat,
    text: &str,
) -> Option<String> {
    let receiver = &widget.receiver;
    let inbound = match serde_json::from_str::<Inbound>(text) {
        Ok(i) => i,
        Err(e) => {
            return Some(error_frame(
                "invalid_frame",
                &format!(
                    "expected {{\"type\":\"started\"|\"done\"|\"active\"|\"ping\", ...}}: {e}"
                ),
            ))
        }
    };
    let (id, result) = match &inbound {
        Inbound::Ping => return Some(r#"{"type":"pong"}"#.into()),
        // A preview is no audience: what it shows and ends changes nothing.
        Inbound::Started { .. } | Inbound::Done { .. } | Inbound::Active { .. }
            if widget.preview =>
        {
            return None
        }
        Inbound::Active { active } => {
            // Off air counts only for a receiver that holds alerts while inactive; for one that
            // does not, every widget is an audience.
            let holds = match settings.get(receiver).await {
                Ok(s) => s.hold_while_inactive,
                Err(_) => true,
            };
            hub.on_air(widget, *active || !holds).await;
            return None;
        }
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

fn error_frame(code: &str, message: &str) -> String {
    json!({ "type": "error", "code": code, "message": message }).to_string()
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
