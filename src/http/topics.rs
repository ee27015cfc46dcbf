//! Broadcast topics over HTTP (see [`crate::topics`]): `POST /broadcast` for publishers, and
//! `GET /ws/topics` for pages that subscribe.
//!
//! Who may subscribe to what: a topic a public pattern covers (`--public-topics`) needs no
//! token; any other needs a subscribe token (`cuebox topic-token PATTERN...`) whose patterns
//! cover it. Anything else is refused, with 403 before the upgrade, or with an `error` frame for
//! a later `subscribe`.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_http::ws::{CloseCode, Message};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::Instrument;

use super::publish::{admit_publisher, read_body};
use super::wire;
use super::wire::{not_an_upgrade, reason};
use super::{ApiError, AppState};
use crate::alert::FieldError;
use crate::topics::{Missed, Outgoing, Pattern, Sent, Topic};

/// Bodies past this are refused with 413 before they are read whole.
const MAX_BODY: usize = 64 * 1024;
/// Most bytes of a message's `data`, serialized.
pub const MAX_DATA: usize = 16 * 1024;
/// Most topics one message goes to.
const MAX_TOPICS: usize = 32;
/// Most patterns one subscriber holds.
const MAX_PATTERNS: usize = 64;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(FieldError::invalid(field, message))
}

/// A `POST /broadcast` body, checked.
struct Broadcast {
    topics: Vec<Topic>,
    event: String,
    data: Value,
}

impl Broadcast {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::Invalid(FieldError::body(
                "invalid_json",
                format!("body is not valid JSON: {e}"),
            ))
        })?;
        let Value::Object(mut obj) = value else {
            return Err(ApiError::Invalid(FieldError::body(
                "invalid_json",
                "body must be a JSON object",
            )));
        };
        let topics = match obj.remove("topics") {
            Some(Value::Array(list)) if (1..=MAX_TOPICS).contains(&list.len()) => list
                .iter()
                .map(|t| match t {
                    Value::String(s) => Topic::parse(s).map_err(ApiError::Invalid),
                    _ => Err(invalid("topics", "each topic must be a string")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(invalid(
                    "topics",
                    format!("topics must be an array of 1 to {MAX_TOPICS} topics"),
                ))
            }
            None => return Err(missing("topics")),
        };
        let event = match obj.remove("event") {
            Some(Value::String(e))
                if (1..=64).contains(&e.chars().count()) && !e.chars().any(char::is_control) =>
            {
                e
            }
            Some(_) => {
                return Err(invalid(
                    "event",
                    "event must be a string of 1 to 64 characters",
                ))
            }
            None => return Err(missing("event")),
        };
        let data = match obj.remove("data") {
            Some(Value::Object(data)) => Value::Object(data),
            None => Value::Object(Map::new()),
            Some(_) => return Err(invalid("data", "data must be a JSON object")),
        };
        let size = serde_json::to_string(&data).map_or(usize::MAX, |s| s.len());
        if size > MAX_DATA {
            return Err(invalid(
                "data",
                format!("data must be at most {MAX_DATA} bytes as JSON"),
            ));
        }
        if let Some(field) = obj.keys().next() {
            return Err(ApiError::Invalid(FieldError {
                code: "unknown_field",
                message: format!("unknown field {field:?}"),
                field: Some(field.clone()),
            }));
        }
        let mut topics = topics;
        topics.sort();
        topics.dedup();
        Ok(Self {
            topics,
            event,
            data,
        })
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::Invalid(FieldError {
        code: "missing_field",
        message: format!("{field} is required"),
        field: Some(field.into()),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `POST /broadcast` with a publish key: `{"topics", "event", "data"}`, answered
/// `202 {"id", "offsets": {topic: offset}}`. The message is serialized once; each topic's log
/// gives it its offset, and every subscriber of each topic on every node gets it.
pub async fn broadcast(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admit_publisher(&req, &state)?;
    let bytes = read_body(&mut body, 1024, MAX_BODY, state.body_timeout).await?;
    let message = Broadcast::parse(&bytes)?;
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if (1..=128).contains(&k.len()) => Some(k.to_owned()),
            _ => {
                return Err(invalid(
                    "idempotency_key",
                    "the Idempotency-Key header must be 1 to 128 visible ASCII characters",
                ))
            }
        },
    };
    let outgoing = Outgoing::new(&message.event, &message.data, now_ms());
    let log = &state.topic_log;
    if let Some(key) = &idempotency_key {
        if let Some(first) = log
            .remember(key, &outgoing.id)
            .await
            .map_err(ApiError::of_control)?
        {
            return Ok(HttpResponse::Ok().json(json!({
                "id": first.id,
                "offsets": first.offsets,
                "duplicate": true,
            })));
        }
    }
    let mut offsets = Map::new();
    for topic in &message.topics {
        // The log hands it to the subscribers, in its topic's order (see `TopicLog::append`).
        let sent = log
            .append(topic, &outgoing)
            .await
            .map_err(ApiError::of_control)?;
        offsets.insert(topic.to_string(), sent.offset.into());
    }
    if let Some(key) = &idempotency_key {
        // What a repeat is answered with. Losing this only makes a later repeat answer without
        // offsets: nothing is sent twice.
        let _ = log.answered(key, &outgoing.id, &offsets).await;
    }
    Ok(HttpResponse::build(StatusCode::ACCEPTED).json(json!({
        "id": outgoing.id,
        "offsets": offsets,
        "duplicate": false,
    })))
}

#[derive(Deserialize)]
pub struct SubscribeQuery {
    topics: Option<String>,
    token: Option<String>,
    since: Option<String>,
}

/// What one connection may subscribe to: the public patterns and its token's.
struct Grant {
    patterns: Vec<Pattern>,
}

impl Grant {
    fn of(state: &AppState, token: Option<&str>) -> Result<Self, ApiError> {
        let mut patterns = state.public_topics.clone();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let granted = state
                .tokens
                .topic_grant(token)
                .ok_or(ApiError::BadTopicToken)?;
            patterns.extend(granted);
        }
        Ok(Self { patterns })
    }

    fn allows(&self, wanted: &Pattern) -> bool {
        self.patterns.iter().any(|p| wanted.within(p))
    }
}

/// The patterns of a `topics=` query, if the token (or none) allows every one of them.
fn allowed(
    state: &AppState,
    topics: Option<&str>,
    token: Option<&str>,
) -> Result<(Grant, Vec<Pattern>), ApiError> {
    let patterns =
        crate::topics::name::patterns(topics.unwrap_or("")).map_err(ApiError::Invalid)?;
    if patterns.len() > MAX_PATTERNS {
        return Err(invalid("topics", format!("at most {MAX_PATTERNS} topics")));
    }
    let grant = Grant::of(state, token)?;
    if let Some(refused) = patterns.iter().find(|p| !grant.allows(p)) {
        return Err(ApiError::ForbiddenTopic(refused.to_string()));
    }
    Ok((grant, patterns))
}

const CLIENT_JS: &str = include_str!("../../widget/client.js");
const TOASTS_HTML: &str = include_str!("../../widget/toasts.html");

/// `GET /client.js`: the broadcast client, for any page (`cuebox.subscribe`).
pub async fn client_script() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/javascript; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(CLIENT_JS)
}

/// `GET /toasts?topics=...&token=...[&title=&body=&image=&duration_ms=]`: a ready page that
/// shows each message as a toast, for an iframe or an OBS source. Refused (403, 401) as a
/// subscription to those topics would be.
pub async fn toasts_page(
    query: web::Query<SubscribeQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    allowed(&state, query.topics.as_deref(), query.token.as_deref())?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CONTENT_SECURITY_POLICY, super::pages::CSP))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(TOASTS_HTML))
}

/// `since=trending:PL:42,trending:NL:7`: the last offset of each topic the subscriber got.
fn parse_since(s: &str) -> Result<Vec<(Topic, u64)>, ApiError> {
    s.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (topic, offset) = part
                .rsplit_once(':')
                .ok_or_else(|| invalid("since", "since is topic:offset, comma-separated"))?;
            let offset = offset
                .parse()
                .map_err(|_| invalid("since", "an offset is a whole number"))?;
            Ok((Topic::parse(topic).map_err(ApiError::Invalid)?, offset))
        })
        .collect()
}

/// `GET /ws/topics?topics=P1,P2&token=T[&since=topic:offset,...]`.
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<SubscribeQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (grant, patterns) = allowed(&state, query.topics.as_deref(), query.token.as_deref())?;
    let since = parse_since(query.since.as_deref().unwrap_or(""))?;
    actix_http::ws::verify_handshake(req.head()).map_err(not_an_upgrade)?;
    if *state.shutdown.borrow() {
        return Err(ApiError::ShuttingDown.into());
    }
    let from = req
        .peer_addr()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let address = state.per_address.admit(from).ok_or(ApiError::AddressFull)?;
    let connection = state.connections.admit().ok_or(ApiError::NodeFull)?;
    // Subscribed before the log is read, and so before the upgrade is answered: whatever is
    // published meanwhile waits in the outbox (a message published once the client has its
    // answer reaches it), and the seam drops what the log sent too. No gap, no repeat.
    let (registered, messages) = Registered::new(&state, patterns.clone());
    let mut deliveries = Deliveries {
        backlog: VecDeque::new(),
        messages,
        last: HashMap::new(),
    };
    deliveries.recover(&state, &patterns, since).await;
    let (response, wire, inbound) = wire::upgrade(
        &req,
        body,
        deliveries,
        reason(CloseCode::Again, "fell behind"),
    )?;
    let state = state.into_inner();
    let shutdown = state.shutdown.clone();
    // Served from this task directly: each async fn between it and `wire::serve` would keep its
    // own copy of the wire and the inbound frames for the connection's whole life. It answers
    // what the client sends, pings it, and closes the connection when it ends; the messages
    // themselves never pass through here (see [`Deliveries`]).
    actix_web::rt::spawn(
        async move {
            let mut subscriber = Subscriber { grant, patterns };
            let mut client = Connected {
                subscriber: &mut subscriber,
                topics: &state.hub.topics,
                id: registered.id,
            };
            let served = wire::serve(wire, inbound, shutdown, &mut client).await;
            if served == wire::Served::Cut {
                state.metrics.topic_dropped();
            }
            drop((registered, connection, address));
        }
        .instrument(tracing::info_span!("topics")),
    );
    Ok(response)
}

/// A subscriber as this node's fan-out knows it, for as long as this lives: unsubscribed and
/// counted out when dropped, however its connection ends.
struct Registered {
    topics: std::sync::Arc<crate::topics::Topics>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    id: u64,
}

impl Registered {
    /// Registers a subscriber of `patterns`, and gives the outbox its messages arrive in.
    fn new(
        state: &AppState,
        patterns: Vec<Pattern>,
    ) -> (Self, futures_channel::mpsc::Receiver<Sent>) {
        let subscription = state.hub.topics.subscribe(patterns);
        state.metrics.topic_subscriber(1);
        let registered = Self {
            topics: state.hub.topics.clone(),
            metrics: state.metrics.clone(),
            id: subscription.id,
        };
        (registered, subscription.messages)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.topics.unsubscribe(self.id);
        self.metrics.topic_subscriber(-1);
    }
}

/// What a subscriber's response writes: the messages it missed, then each live one it has not
/// had. The response takes them from the outbox itself ([`wire`]); the outbox closes when the
/// fan-out dropped the subscriber for falling behind, and the response then closes with 1013.
struct Deliveries {
    backlog: VecDeque<ByteString>,
    messages: futures_channel::mpsc::Receiver<Sent>,
    /// The last offset sent of each topic: what the log already sent is not sent again from the
    /// live stream (the seam between the two).
    last: HashMap<Topic, u64>,
}

impl Deliveries {
    /// Whether `sent` is news to this subscriber; notes it sent.
    fn fresh(&mut self, sent: &Sent) -> bool {
        match self.last.get_mut(&sent.topic) {
            Some(last) if sent.offset <= *last => false,
            Some(last) => {
                *last = sent.offset;
                true
            }
            None => {
                self.last.insert(sent.topic.clone(), sent.offset);
                true
            }
        }
    }

    /// Reads from the log what a returning subscriber missed (`since`: the last offset it got of
    /// each topic), or that it cannot be told (`reset`).
    async fn recover(&mut self, state: &AppState, patterns: &[Pattern], since: Vec<(Topic, u64)>) {
        for (topic, offset) in since {
            if !patterns.iter().any(|p| p.matches(&topic)) {
                continue;
            }
            self.last.insert(topic.clone(), offset);
            match state.topic_log.since(&topic, offset).await {
                Ok(Missed::Messages(missed)) => {
                    if !missed.is_empty() {
                        state.metrics.topic_recovered();
                    }
                    for sent in missed {
                        if self.fresh(&sent) {
                            self.backlog.push_back(sent.frame);
                        }
                    }
                }
                Ok(Missed::Reset) | Err(_) => {
                    let reset = json!({"type": "reset", "topic": topic}).to_string();
                    self.backlog.push_back(reset.into());
                }
            }
        }
    }
}

impl futures_util::Stream for Deliveries {
    type Item = Message;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        use futures_util::StreamExt;
        use std::task::Poll;
        if let Some(frame) = self.backlog.pop_front() {
            return Poll::Ready(Some(Message::Text(frame)));
        }
        loop {
            match self.messages.poll_next_unpin(cx) {
                Poll::Ready(Some(sent)) => {
                    if self.fresh(&sent) {
                        return Poll::Ready(Some(Message::Text(sent.frame)));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A subscriber as `wire::serve` serves it.
struct Connected<'a> {
    subscriber: &'a mut Subscriber,
    topics: &'a crate::topics::Topics,
    id: u64,
}

impl wire::Client for Connected<'_> {
    async fn answer(&mut self, text: &str) -> Option<String> {
        self.subscriber.command(self.topics, self.id, text)
    }

    fn held(&self) -> bool {
        self.topics.contains(self.id)
    }
}

/// One subscriber's connection: what it may subscribe to, and what it does.
struct Subscriber {
    grant: Grant,
    patterns: Vec<Pattern>,
}

impl Subscriber {
    /// A frame the subscriber sent: `subscribe`, `unsubscribe` or `ping`; answers what to send
    /// back, if anything.
    fn command(&mut self, topics: &crate::topics::Topics, id: u64, text: &str) -> Option<String> {
        let v: Value = serde_json::from_str(text).ok()?;
        let topic = v["topic"].as_str().unwrap_or("");
        match v["type"].as_str()? {
            "ping" => Some(r#"{"type":"pong"}"#.into()),
            "subscribe" => {
                let pattern = match Pattern::parse(topic) {
                    Ok(p) => p,
                    Err(e) => {
                        return Some(error_frame("invalid_topic", topic, &e.message));
                    }
                };
                if !self.grant.allows(&pattern) {
                    return Some(error_frame(
                        "forbidden_topic",
                        topic,
                        "neither a public topic nor one this token grants",
                    ));
                }
                if !self.patterns.contains(&pattern) {
                    if self.patterns.len() >= MAX_PATTERNS {
                        return Some(error_frame(
                            "too_many_topics",
                            topic,
                            &format!("at most {MAX_PATTERNS} topics"),
                        ));
                    }
                    self.patterns.push(pattern);
                    topics.set_patterns(id, self.patterns.clone());
                }
                Some(json!({"type": "subscribed", "topic": topic}).to_string())
            }
            "unsubscribe" => {
                self.patterns.retain(|p| p.to_string() != topic);
                topics.set_patterns(id, self.patterns.clone());
                Some(json!({"type": "unsubscribed", "topic": topic}).to_string())
            }
            _ => None,
        }
    }
}

fn error_frame(code: &str, topic: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "topic": topic, "message": message}).to_string()
}
