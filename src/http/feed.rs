//! `GET /ws/{receiver}/feed?token=<dashboard token>[&since=<event id>]`: a receiver's live feed,
//! for docks (see [`crate::feed`]). The server sends `{"type":"event", ...}` frames, first what
//! the dock missed since `since` (or `{"type":"reset"}` when that is more than this node keeps,
//! or when the dock fell too far behind), then every event as it happens. A dock may send
//! `{"type":"ping"}`, answered `{"type":"pong"}`; nothing else it sends does anything.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::controls::authorize_controller;
use super::socket::ConnectionSocket;
use super::widget::{
    not_an_upgrade, reason, send, Outbound, Unsent, CLOSE_TIMEOUT, PING_EVERY, SILENCE,
};
use super::{ApiError, AppState};
use crate::alert::ReceiverId;
use crate::feed::{Subscription, REVOKED};

const RESET: &str = r#"{"type":"reset"}"#;

#[derive(Deserialize)]
pub struct FeedQuery {
    token: Option<String>,
    since: Option<u64>,
}

pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: web::Query<FeedQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let receiver = ReceiverId::parse(&path).map_err(ApiError::from)?;
    authorize_controller(&req, &state, &receiver, query.token.as_deref()).await?;
    actix_http::ws::verify_handshake(req.head()).map_err(not_an_upgrade)?;
    if *state.shutdown.borrow() {
        return Err(ApiError::ShuttingDown.into());
    }
    let connection = state.connections.admit().ok_or(ApiError::NodeFull)?;
    let subscription = state
        .hub
        .open_feed(&receiver, query.since)
        .await
        .map_err(ApiError::from)?;
    let (response, session, stream) = match actix_ws::handle(&req, body) {
        Ok(upgraded) => upgraded,
        Err(e) => {
            state.hub.close_feed(&receiver).await;
            return Err(e);
        }
    };
    let stream = stream.max_frame_size(4 * 1024).aggregate_continuations();
    let hub = state.hub.clone();
    let shutdown = state.shutdown.clone();
    let socket = req.conn_data::<ConnectionSocket>().copied();
    actix_web::rt::spawn(async move {
        run(&receiver, subscription, session, stream, shutdown, socket).await;
        hub.close_feed(&receiver).await;
        drop(connection);
    });
    Ok(response)
}

#[tracing::instrument(name = "feed", skip_all, fields(receiver = %receiver))]
async fn run(
    receiver: &ReceiverId,
    subscription: Subscription,
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    socket: Option<ConnectionSocket>,
) {
    let Subscription { missed, mut live } = subscription;
    let first: Vec<Outbound> = match missed {
        Some(missed) => missed
            .iter()
            .map(|e| Outbound::Text((&**e).into()))
            .collect(),
        None => vec![Outbound::Text(RESET.into())],
    };
    let mut heard = Instant::now();
    let mut heartbeat = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut pending: std::collections::VecDeque<Outbound> = first.into();
    let close: Option<CloseReason> = 'conn: loop {
        while let Some(out) = pending.pop_front() {
            match send(&mut session, out).await {
                Ok(()) => {}
                Err(Unsent::Closed) => break 'conn None,
                Err(Unsent::Stuck) => {
                    if let Some(socket) = socket {
                        socket.abort();
                    }
                    break 'conn Some(reason(CloseCode::Again, "too slow"));
                }
            }
        }
        tokio::select! {
            event = live.recv() => match event {
                Ok(text) if &*text == REVOKED => {
                    break 'conn Some(reason(CloseCode::Other(4001), "token rotated"));
                }
                Ok(text) => pending.push_back(Outbound::Text((&*text).into())),
                // Fell behind the broadcast: what it lost is told as a reset.
                Err(RecvError::Lagged(_)) => pending.push_back(Outbound::Text(RESET.into())),
                Err(RecvError::Closed) => break 'conn None,
            },
            inbound = stream.recv() => match inbound {
                Some(Ok(AggregatedMessage::Text(text))) => {
                    heard = Instant::now();
                    let ping = serde_json::from_str::<serde_json::Value>(&text)
                        .is_ok_and(|v| v["type"] == "ping");
                    if ping {
                        pending.push_back(Outbound::Text(r#"{"type":"pong"}"#.into()));
                    }
                }
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    heard = Instant::now();
                    pending.push_back(Outbound::Pong(bytes));
                }
                Some(Ok(AggregatedMessage::Pong(_) | AggregatedMessage::Binary(_))) => {
                    heard = Instant::now();
                }
                Some(Ok(AggregatedMessage::Close(reason))) => break 'conn reason,
                None | Some(Err(_)) => break 'conn None,
            },
            _ = heartbeat.tick() => {
                if heard.elapsed() > SILENCE {
                    break 'conn Some(reason(CloseCode::Away, "silent too long"));
                }
                pending.push_back(Outbound::Ping);
            }
            _ = shutdown.changed() => {
                break 'conn Some(reason(CloseCode::Restart, "node shutting down"));
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(close)).await;
}
