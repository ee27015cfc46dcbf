//! A WebSocket whose frames go from where they come from straight into the response.
//!
//! With actix-ws, a frame goes from the connection's task through a channel of the session's to
//! the response: it wakes the task, and then the task wakes the response. A broadcast reaches
//! thousands of sockets at once, so a subscriber's response reads its outbox itself
//! ([`Outlet`]), and so does a widget's (`http::widget`): a message wakes one thing per
//! socket, the response that writes it, and a socket holds no session channel. The
//! connection's task is woken only by what the client sends and by its timers; what it sends
//! (answers, pings, the close) goes through a small queue of its own ([`Wire`]). [`Inbound`]
//! reads the client's frames from the request's payload.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{
    CloseCode, CloseReason, Codec, Frame, HandshakeError, Message, ProtocolError,
};
use actix_web::body::{BodyStream, MessageBody};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_channel::mpsc;
use futures_util::{Stream, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::socket::ConnectionSocket;
use super::ApiError;

/// The server pings every socket this often; one silent for [`SILENCE`] is dropped.
pub const PING_EVERY: Duration = Duration::from_secs(15);
const SILENCE: Duration = Duration::from_secs(45);
/// How long one frame may wait to be taken by a socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing frame may wait: a socket that took nothing for [`SEND_TIMEOUT`] will
/// not take it either, and the connection is dropped all the same.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames the connection's task may have waiting to be written; it waits for room past that.
const CONTROL_QUEUE: usize = 8;
/// Clients of these sockets send small commands; a frame bigger than this is not one.
const MAX_FRAME: usize = 4 * 1024;
/// Bytes one poll of the response gathers before handing them to be written.
const GATHER: usize = 16 * 1024;

/// A frame for the client as it goes out, or, for the word that the client's token was rotated
/// (`hub::REVOKED`, `feed::REVOKED`: no JSON starts with a NUL), the close that says so.
pub fn frame_or_revoked(frame: bytestring::ByteString) -> Message {
    if frame.as_bytes().first() == Some(&0) {
        Message::Close(Some(reason(CloseCode::Other(4001), "token rotated")))
    } else {
        Message::Text(frame)
    }
}

/// The task's side of a connection: what it sends, and whether the response still runs.
pub struct Wire {
    control: mpsc::Sender<Message>,
    /// Fires when the response ends (its body dropped).
    ended: oneshot::Receiver<()>,
    /// Whether `ended` has fired (a oneshot is not polled again once it has).
    has_ended: bool,
    socket: Option<ConnectionSocket>,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq)]
pub enum Unqueued {
    /// The response ended.
    Ended,
    /// The client took nothing for [`SEND_TIMEOUT`] while [`CONTROL_QUEUE`] frames waited: it
    /// was cut off.
    Cut,
}

/// Answers the upgrade of `req`: the response writes each frame of `live` as it comes (a close
/// among them ends it), then `on_end` as the close when `live` ends, with what the task sends
/// ([`Wire::send`]) in between.
pub fn upgrade<S>(
    req: &HttpRequest,
    payload: web::Payload,
    live: S,
    on_end: CloseReason,
) -> Result<(HttpResponse, Wire, Inbound), actix_web::Error>
where
    S: Stream<Item = Message> + Unpin + 'static,
{
    let mut response = actix_http::ws::handshake(req.head()).map_err(not_an_upgrade)?;
    let (control, commands) = mpsc::channel(CONTROL_QUEUE - 1);
    let (done, ended) = oneshot::channel();
    let outlet = Outlet {
        commands,
        live,
        on_end: Some(on_end),
        buf: BytesMut::new(),
        codec: Codec::new(),
        closing: false,
        done: Some(done),
    };
    let response = response
        .message_body(BodyStream::new(outlet).boxed())?
        .into();
    let wire = Wire {
        control,
        ended,
        has_ended: false,
        socket: req.conn_data::<ConnectionSocket>().copied(),
    };
    let inbound = Inbound {
        payload,
        buf: BytesMut::new(),
        codec: Codec::new().max_size(MAX_FRAME),
        finished: false,
    };
    Ok((response, wire, inbound))
}

impl Wire {
    /// Queues `message` to go out between the live frames, waiting while [`CONTROL_QUEUE`]
    /// frames are already queued (a burst of commands, answered as the response writes). A
    /// client that lets them sit for [`SEND_TIMEOUT`] is not reading: it is cut off here.
    pub async fn send(&mut self, message: Message) -> Result<(), Unqueued> {
        let room = std::future::poll_fn(|cx| self.control.poll_ready(cx));
        match tokio::time::timeout(SEND_TIMEOUT, room).await {
            Ok(Ok(())) => self
                .control
                .start_send(message)
                .map_err(|_| Unqueued::Ended),
            Ok(Err(_)) => Err(Unqueued::Ended),
            Err(_) => {
                self.cut();
                Err(Unqueued::Cut)
            }
        }
    }

    /// Whether the response ended.
    pub fn has_ended(&mut self) -> bool {
        if !self.has_ended {
            self.has_ended = !matches!(
                self.ended.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            );
        }
        self.has_ended
    }

    /// Resolves when the response ends.
    pub async fn ended(&mut self) {
        if !self.has_ended {
            let _ = (&mut self.ended).await;
            self.has_ended = true;
        }
    }

    /// Drops the connection at once, unless its response already ended (see
    /// [`ConnectionSocket::abort`]: the check and the abort are one step of the connection's
    /// worker, so the socket is still this connection's).
    pub fn cut(&mut self) {
        if !self.has_ended() {
            if let Some(socket) = self.socket {
                socket.abort();
            }
        }
    }

    /// Sends the close and waits for the response to write it, for [`CLOSE_TIMEOUT`] at most:
    /// a client that does not take it is cut off.
    pub async fn close(mut self, reason: Option<CloseReason>) {
        let closing = async {
            std::future::poll_fn(|cx| self.control.poll_ready(cx)).await?;
            self.control.start_send(Message::Close(reason))?;
            self.ended().await;
            Ok::<(), mpsc::SendError>(())
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            self.cut();
        }
    }
}

/// The response body: the task's frames and the live ones, encoded as they are taken.
struct Outlet<S> {
    commands: mpsc::Receiver<Message>,
    live: S,
    /// The close sent when `live` ends, until then.
    on_end: Option<CloseReason>,
    buf: BytesMut,
    codec: Codec,
    closing: bool,
    done: Option<oneshot::Sender<()>>,
}

impl<S> Outlet<S> {
    /// Encodes `message`; a close ends the body once it is written.
    fn encode(&mut self, message: Message) -> Result<(), ProtocolError> {
        let close = matches!(message, Message::Close(_));
        self.codec.encode(message, &mut self.buf)?;
        if close {
            self.closing = true;
        }
        Ok(())
    }
}

impl<S: Stream<Item = Message> + Unpin> Stream for Outlet<S> {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // The task's frames first: answers and pongs are few and small.
        while !this.closing {
            match this.commands.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    if let Err(e) = this.encode(message) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                // The task is gone: nothing more is sent.
                Poll::Ready(None) => this.closing = true,
                Poll::Pending => break,
            }
        }
        while !this.closing && this.buf.len() < GATHER {
            match this.live.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    if let Err(e) = this.encode(message) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Poll::Ready(None) => {
                    let reason = this.on_end.take();
                    if let Err(e) = this.encode(Message::Close(reason)) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Poll::Pending => break,
            }
        }
        if !this.buf.is_empty() {
            // actix polls again while it has room to write, so what is left waits for that.
            return Poll::Ready(Some(Ok(this.buf.split().freeze())));
        }
        if this.closing {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<S> Drop for Outlet<S> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// The client's frames, read from the request's payload.
pub struct Inbound {
    payload: web::Payload,
    buf: BytesMut,
    codec: Codec,
    finished: bool,
}

impl Inbound {
    /// The next frame the client sent; `None` once its side ended.
    pub async fn recv(&mut self) -> Option<Result<Frame, ProtocolError>> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.finished {
                return None;
            }
            match self.payload.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(ProtocolError::Io(std::io::Error::other(e))));
                }
                None => self.finished = true,
            }
        }
    }
}

/// How a connection served by [`serve`] ended.
#[derive(Debug, PartialEq)]
pub enum Served {
    /// Closed, by either side, or its response ended.
    Closed,
    /// Cut off: the client took none of the task's frames for a while (not counted as
    /// dropped elsewhere, unlike one the fan-out dropped for falling behind).
    Cut,
}

/// What a client sent that breaks the protocol, for [`Client::refuse`].
pub enum Broken<'a> {
    /// A text frame that is not UTF-8.
    NotUtf8,
    /// A frame the codec refused, or the socket failed.
    Protocol(&'a ProtocolError),
}

/// What differs between the kinds of connection [`serve`] serves: a widget, a dock's feed, a
/// broadcast subscriber.
pub trait Client {
    /// The answer to a text frame, if any.
    async fn answer(&mut self, text: &str) -> Option<String>;

    /// Whether what feeds the response (the fan-out, the hub) still holds the client: one it let
    /// go for falling behind whose response has not closed a beat later reads nothing, and is
    /// cut off.
    fn held(&self) -> bool;

    /// The answer to a binary frame, if any.
    fn binary(&self) -> Option<String> {
        None
    }

    /// When the first ping goes out.
    fn first_ping(&self) -> Duration {
        PING_EVERY
    }

    /// The close for what breaks the protocol; `None` closes without a reason.
    fn refuse(&self, broken: Broken<'_>) -> Option<CloseReason> {
        match broken {
            Broken::NotUtf8 => Some(reason(CloseCode::Invalid, "text must be UTF-8")),
            Broken::Protocol(_) => None,
        }
    }

    /// Called once the connection is over, whichever way, before its close is sent; `withdrawn`
    /// when the node is stopping.
    async fn ending(&mut self, _withdrawn: bool) {}
}

/// Serves one connection until it ends: answers each frame the client sends (see [`Client`]),
/// and its pings with pongs; pings it every [`PING_EVERY`]; closes it when it was silent for
/// [`SILENCE`] or the node stops, or cuts it off when it reads nothing.
pub async fn serve(
    mut wire: Wire,
    mut inbound: Inbound,
    mut shutdown: watch::Receiver<bool>,
    client: &mut impl Client,
) -> Served {
    let mut heard = Instant::now();
    let mut heartbeat = tokio::time::interval_at(Instant::now() + client.first_ping(), PING_EVERY);
    // Whether the client was let go at the last beat.
    let mut was_let_go = false;
    let mut withdrawn = false;
    // The close to send, or how the connection ended without one.
    let end: Result<Option<CloseReason>, Served> = loop {
        let out = tokio::select! {
            frame = inbound.recv() => match frame {
                Some(Ok(Frame::Text(bytes))) => {
                    heard = Instant::now();
                    let Ok(text) = std::str::from_utf8(&bytes) else {
                        break Ok(client.refuse(Broken::NotUtf8));
                    };
                    // Boxed: the task keeps only what it holds between frames.
                    Box::pin(client.answer(text)).await.map(|a| Message::Text(a.into()))
                }
                Some(Ok(Frame::Binary(_))) => {
                    heard = Instant::now();
                    client.binary().map(|a| Message::Text(a.into()))
                }
                Some(Ok(Frame::Ping(bytes))) => {
                    heard = Instant::now();
                    Some(Message::Pong(bytes))
                }
                Some(Ok(Frame::Pong(_))) => {
                    heard = Instant::now();
                    None
                }
                Some(Ok(Frame::Continuation(_))) => {
                    break Ok(Some(reason(CloseCode::Size, "frames must not be fragmented")));
                }
                // Echo the client's close, as the protocol asks.
                Some(Ok(Frame::Close(reason))) => break Ok(reason),
                None => break Ok(None),
                Some(Err(e)) => break Ok(client.refuse(Broken::Protocol(&e))),
            },
            _ = heartbeat.tick() => {
                if heard.elapsed() > SILENCE {
                    break Ok(Some(reason(CloseCode::Away, "silent too long")));
                }
                let let_go = !client.held();
                if let_go && was_let_go {
                    // Counted as dropped where it was let go.
                    wire.cut();
                    break Err(Served::Closed);
                }
                was_let_go = let_go;
                Some(Message::Ping(Bytes::new()))
            }
            // The response ended: its close was written, or the socket is gone.
            _ = wire.ended() => break Err(Served::Closed),
            _ = shutdown.changed() => {
                withdrawn = true;
                break Ok(Some(reason(CloseCode::Restart, "node shutting down")));
            }
        };
        if let Some(out) = out {
            match wire.send(out).await {
                Ok(()) => {}
                Err(Unqueued::Ended) => break Err(Served::Closed),
                Err(Unqueued::Cut) => break Err(Served::Cut),
            }
        }
    };
    // Boxed, as answers are: a widget's ending is a store call, which the task would otherwise
    // hold room for all its life.
    Box::pin(client.ending(withdrawn)).await;
    match end {
        Ok(close) => {
            if !wire.has_ended() {
                wire.close(close).await;
            }
            Served::Closed
        }
        Err(served) => served,
    }
}

/// A request to the socket's path that is not a WebSocket upgrade is 426; a malformed upgrade
/// is 400.
pub fn not_an_upgrade(e: HandshakeError) -> ApiError {
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

/// A close with its code and a reason for people to read.
pub fn reason(code: CloseCode, description: &str) -> CloseReason {
    CloseReason {
        code,
        description: Some(description.to_owned()),
    }
}
