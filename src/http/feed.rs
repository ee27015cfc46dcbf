//! `GET /ws/{receiver}/feed?token=<dashboard token>[&since=<event id>]`: a receiver's live feed,
//! for docks (see [`crate::feed`]). The server sends `{"type":"event", ...}` frames, first what
//! the dock missed since `since` (or `{"type":"reset"}` when that is more than this node keeps),
//! then every event as it happens. A dock may send `{"type":"ping"}`, answered
//! `{"type":"pong"}`; nothing else it sends does anything. A dock that falls [`OUTBOX`] events
//! behind is closed with 1013 and comes back with `since`; a rotated dashboard token closes it
//! with 4001.
//!
//! [`OUTBOX`]: crate::topics::OUTBOX

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_http::ws::{CloseCode, Message};
use actix_web::{web, HttpRequest, HttpResponse};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde::Deserialize;
use tracing::Instrument;

use super::controls::authorize_controller;
use super::wire;
use super::wire::{not_an_upgrade, reason};
use super::{ApiError, AppState};
use crate::alert::ReceiverId;
use crate::feed::Subscription;
use crate::hub::Hub;
use crate::topics::Sent;

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
    let Subscription { missed, live } = state
        .hub
        .open_feed(&receiver, query.since)
        .await
        .map_err(ApiError::from)?;
    let id = live.id;
    let events = Events {
        backlog: missed.map_or_else(|| vec![RESET.into()], Vec::from).into(),
        live: live.messages,
    };
    let (response, wire, inbound) =
        match wire::upgrade(&req, body, events, reason(CloseCode::Again, "fell behind")) {
            Ok(upgraded) => upgraded,
            Err(e) => {
                state.hub.close_feed(&receiver, id).await;
                return Err(e);
            }
        };
    let hub = state.hub.clone();
    let shutdown = state.shutdown.clone();
    let span = tracing::info_span!("feed", receiver = %receiver);
    // Served from this task directly, as widgets are (see `widget::connect`).
    actix_web::rt::spawn(
        async move {
            wire::serve(wire, inbound, shutdown, &mut Dock { hub: &hub, id }).await;
            hub.close_feed(&receiver, id).await;
            drop(connection);
        }
        .instrument(span),
    );
    Ok(response)
}

/// What a dock's response writes: what it missed (or a reset), then each event as it comes; the
/// dashboard token's rotation ends it with 4001.
struct Events {
    backlog: VecDeque<ByteString>,
    live: futures_channel::mpsc::Receiver<Sent>,
}

impl futures_util::Stream for Events {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if let Some(frame) = self.backlog.pop_front() {
            return Poll::Ready(Some(Message::Text(frame)));
        }
        self.live
            .poll_next_unpin(cx)
            .map(|sent| sent.map(|sent| wire::frame_or_revoked(sent.frame)))
    }
}

/// A dock's feed as `wire::serve` serves it: it answers `ping`, and nothing else.
struct Dock<'a> {
    hub: &'a Hub,
    id: u64,
}

impl wire::Client for Dock<'_> {
    async fn answer(&mut self, text: &str) -> Option<String> {
        serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| v["type"] == "ping")
            .then(|| r#"{"type":"pong"}"#.to_owned())
    }

    fn held(&self) -> bool {
        self.hub.topics.contains(self.id)
    }
}
