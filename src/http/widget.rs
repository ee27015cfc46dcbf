//! `GET /ws/{receiver}?token=T`: one widget's WebSocket.
//!
//! Each connection is one `select!` loop over the widget's frames, the hub's frames for it, a
//! heartbeat and shutdown, with one way out: whatever ends the loop, the widget leaves the hub
//! exactly once, after it. Every frame the server writes goes out through one bounded send
//! ([`send`]), replies and pongs included, so a widget that stops reading is closed whatever it
//! sends.

use std::time::Duration;

use actix_http::ws::HandshakeError;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::socket::ConnectionSocket;
use super::token::{check_token, Opening, TokenQuery};
use super::{ApiError, AppState};
use crate::alert::ReceiverId;
use crate::hub::{Frame, Hub, Widget};
use crate::moderation::SettingsCache;

/// The server pings this often; a widget silent for [`SILENCE`] is dropped.
pub(super) const PING_EVERY: Duration = Duration::from_secs(15);
pub(super) const SILENCE: Duration = Duration::from_secs(45);
/// Widgets send small control frames; anything bigger is not a widget.
const MAX_FRAME: usize = 4 * 1024;
/// Longest alert id a widget may name; ids are UUIDs.
const MAX_ID: usize = 64;
/// How long one frame may wait to be taken by a widget's socket.
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing frame may wait: a socket that took nothing for [`SEND_TIMEOUT`] will
/// not take it either, and the connection is dropped all the same.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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
    let settings = state.settings.clone();
    let shutdown = state.shutdown.clone();
    let socket = req.conn_data::<ConnectionSocket>().copied();
    actix_web::rt::spawn(async move {
        run(hub, settings, widget, session, stream, shutdown, socket).await;
        drop(connection);
    });
    Ok(response)
}

/// What the server writes to a widget.
pub(super) enum Outbound {
    Text(Frame),
    Ping,
    Pong(Bytes),
}

/// What one turn of a widget's loop comes to.
enum Step {
    Send(Outbound),
    Nothing,
    End(Option<CloseReason>),
}

/// Why a connection could not send.
pub(super) enum Unsent {
    /// The socket is gone.
    Closed,
    /// The socket took nothing for [`SEND_TIMEOUT`]: the widget stopped reading.
    Stuck,
}

/// The one way a frame goes to a widget: bounded by [`SEND_TIMEOUT`], so that a widget that
/// sends but never reads fills its socket and is then closed, rather than held with its frames.
pub(super) async fn send(session: &mut Session, out: Outbound) -> Result<(), Unsent> {
    let sent = async {
        match out {
            Outbound::Text(frame) => session.text(frame).await,
            Outbound::Ping => session.ping(b"").await,
            Outbound::Pong(bytes) => session.pong(&bytes).await,
        }
    };
    match tokio::time::timeout(SEND_TIMEOUT, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Unsent::Closed),
        Err(_) => Err(Unsent::Stuck),
    }
}

#[tracing::instrument(name = "widget", skip_all, fields(receiver = %widget.receiver))]
async fn run(
    hub: std::sync::Arc<Hub>,
    settings: std::sync::Arc<SettingsCache>,
    mut widget: Widget,
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    socket: Option<ConnectionSocket>,
) {
    let receiver = widget.receiver.clone();
    let hello = json!({ "type": "hello", "receiver": receiver, "protocol": 1 }).to_string();
    let mut next = Step::Send(Outbound::Text(hello.into()));
    tracing::debug!(widget = widget.id, "widget joined");

    let mut heard = Instant::now();
    let mut withdrawn = false;
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + first_ping(widget.id), PING_EVERY);
    let close = loop {
        match next {
            Step::Send(out) => match send(&mut session, out).await {
                Ok(()) => {}
                Err(Unsent::Closed) => break None,
                Err(Unsent::Stuck) => {
                    // Stuck, not closed: the connection is open (a closed one fails the send at
                    // once), and this task runs on its worker, so its socket is still its own.
                    if let Some(socket) = socket {
                        socket.abort();
                    }
                    break Some(reason(CloseCode::Again, "too slow"));
                }
            },
            Step::Nothing => {}
            Step::End(close) => break close,
        }
        next = tokio::select! {
            inbound = stream.recv() => match inbound {
                Some(Ok(AggregatedMessage::Text(text))) => {
                    heard = Instant::now();
                    match handle(&hub, &settings, &widget, &text).await {
                        Some(reply) => Step::Send(Outbound::Text(reply)),
                        None => Step::Nothing,
                    }
                }
                Some(Ok(AggregatedMessage::Binary(_))) => {
                    heard = Instant::now();
                    let reply = error_frame("invalid_frame", "frames are JSON text");
                    Step::Send(Outbound::Text(reply))
                }
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    heard = Instant::now();
                    Step::Send(Outbound::Pong(bytes))
                }
                Some(Ok(AggregatedMessage::Pong(_))) => {
                    heard = Instant::now();
                    Step::Nothing
                }
                // Echo the widget's close, as the protocol asks.
                Some(Ok(AggregatedMessage::Close(reason))) => Step::End(reason),
                None => Step::End(None),
                Some(Err(ProtocolError::Overflow)) => {
                    Step::End(Some(reason(CloseCode::Size, "frame too large")))
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "widget protocol error");
                    Step::End(Some(reason(CloseCode::Protocol, "protocol error")))
                }
            },
            frame = widget.frames.next() => match frame {
                Some(frame) if frame.as_bytes().first() == Some(&0) => {
                    Step::End(Some(reason(CloseCode::Other(4001), "token rotated")))
                }
                Some(frame) => Step::Send(Outbound::Text(frame)),
                // The hub let go of this widget: it fell too far behind.
                None => Step::End(Some(reason(CloseCode::Again, "too slow"))),
            },
            _ = heartbeat.tick() => {
                if heard.elapsed() > SILENCE {
                    Step::End(Some(reason(CloseCode::Away, "silent too long")))
                } else {
                    Step::Send(Outbound::Ping)
                }
            }
            _ = shutdown.changed() => {
                withdrawn = true;
                Step::End(Some(reason(CloseCode::Restart, "node shutting down")))
            }
        };
    };
    // Fails harmlessly when the socket is already gone, and gives up on one that is stuck: the
    // connection is dropped with the session either way.
    // Counted out before the socket closes: a stopping node's worker may end as soon as its last
    // socket has closed, and a withdrawal it never recorded would leave a report of a widget
    // that is gone (a reconnecting widget, told of the close, also finds it recorded).
    hub.leave(&widget, withdrawn).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(close)).await;
    tracing::debug!(widget = widget.id, "widget left");
}

/// Acts on one text frame; the answer, if any, goes back to this widget only.
async fn handle(
    hub: &Hub,
    settings: &std::sync::Arc<SettingsCache>,
    widget: &Widget,
    text: &str,
) -> Option<Frame> {
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

/// A request to the socket's path that is not a WebSocket upgrade is 426; a malformed upgrade
/// is 400.
pub(super) fn not_an_upgrade(e: HandshakeError) -> ApiError {
    match e {
        HandshakeError::GetMethodRequired
        | HandshakeError::NoWebsocketUpgrade
        | HandshakeError::NoConnectionUpgrade => ApiError::UpgradeRequired,
        other => ApiError::Invalid(crate::alert::FieldError {
            code: "invalid_handshake",
            message: format!("the WebSocket handshake is not valid: {other}"),
            field: None,
        }),
    }
}

fn error_frame(code: &str, message: &str) -> Frame {
    json!({ "type": "error", "code": code, "message": message })
        .to_string()
        .into()
}

pub(super) fn reason(code: CloseCode, description: &str) -> CloseReason {
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
