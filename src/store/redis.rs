//! The Redis store: the rules run as a Redis Functions library (`lua/receiver.lua`), one `FCALL` per
//! transition, over one multiplexed connection that every transition of the process shares. It
//! is driven on the first HTTP worker's thread, where most calls are made
//! ([`RedisStore::drive_calls_here`]); start-up and background work use a connection of their
//! own.
//!
//! A second connection carries only pub/sub: it hears the snapshots other nodes publish for the
//! receivers this node holds widgets for, and turns them into [`Notice`]s for the hub. It is
//! separate so that a dropped subscriber (say `CLIENT KILL TYPE pubsub`) never fails a publish.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::{ErrorKind, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::connection::{Connection, Pusher, Target};
use super::keys::{Keys, RECEIVER_KEYS};
use super::{
    Event, Flight, Notice, Publish, Rules, Snapshot, Status, Store, StoreError, WidgetChange,
    IDEMPOTENCY_TTL, PRESENCE_TTL,
};
use crate::alert::{AlertRecord, ReceiverId};
use crate::metrics::Metrics;

/// The library of the rules, loaded with `FUNCTION LOAD REPLACE` at start and whenever Redis
/// answers that a function is missing.
const LIBRARY: &str = include_str!("lua/receiver.lua");

/// The library's functions. Their names carry the library's version, so that nodes of two
/// versions can share a Redis during a rolling deploy.
#[derive(Clone, Copy, Debug)]
enum Function {
    Publish,
    Widgets,
    Started,
    Done,
    Check,
    Sweep,
    Status,
}

impl Function {
    fn name(self) -> &'static str {
        match self {
            Function::Publish => "cuebox_v1_publish",
            Function::Widgets => "cuebox_v1_widgets",
            Function::Started => "cuebox_v1_started",
            Function::Done => "cuebox_v1_done",
            Function::Check => "cuebox_v1_check",
            Function::Sweep => "cuebox_v1_sweep",
            Function::Status => "cuebox_v1_status",
        }
    }

    /// As metrics label it.
    fn label(self) -> &'static str {
        match self {
            Function::Publish => "publish",
            Function::Widgets => "widgets",
            Function::Started => "started",
            Function::Done => "done",
            Function::Check => "check",
            Function::Sweep => "sweep",
            Function::Status => "status",
        }
    }
}

/// Loads the library (on every master of a cluster: the command is routed to all of them).
/// Redis before 7 has no Functions, and is refused with a message that says so.
pub async fn load_library(con: &mut Connection) -> Result<(), StoreError> {
    let loaded: redis::RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY)
        .query_async(con)
        .await;
    match loaded {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().to_ascii_lowercase().contains("unknown") => {
            Err(StoreError::Protocol(format!(
                "the Redis store needs Redis 7 or newer (Redis Functions); this Redis answered \
                 FUNCTION LOAD with: {e}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Redis answered that the library's function is missing: a restart without persistence, or a
/// failover to a replica that never had it.
fn is_function_missing(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
}

pub struct RedisStore {
    core: Arc<Core>,
    watches: Watches,
    /// Stopped with the store.
    sweeper: tokio::task::AbortHandle,
}

/// What every function call needs, shared by the store and its sweeper task.
struct Core {
    /// For start-up and background work, and for transitions until `calls` is made.
    con: Connection,
    /// The connection transitions use, driven on an HTTP worker's thread: see
    /// [`RedisStore::drive_calls_here`].
    calls: OnceLock<Connection>,
    making_calls: AtomicBool,
    target: Target,
    keys: Keys,
    rules: Rules,
    node: Arc<str>,
    metrics: Arc<Metrics>,
    /// 0: Redis's own clock. Otherwise the time in ms every call runs at (tests only).
    clock: AtomicU64,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl From<redis::RedisError> for StoreError {
    /// Whether the call may have reached Redis. A refused connection, or an error reply (Redis
    /// answers those before a script runs: OOM, BUSY, LOADING, CLUSTERDOWN), means it did not.
    /// Any other I/O error came after the call was handed to the connection: a timeout while
    /// Redis stalls (the call sits in its socket and runs once Redis resumes) or a connection
    /// that dropped under it. The driver of the connection does not say whether it had written
    /// the call, so those are unknown, never "nothing happened".
    fn from(e: redis::RedisError) -> Self {
        let nothing_reached = e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(_)
                    | ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::InvalidClientConfig
                    | ErrorKind::AuthenticationFailed
            );
        if nothing_reached {
            StoreError::Unavailable(e.to_string())
        } else if e.is_io_error() {
            StoreError::OutcomeUnknown(e.to_string())
        } else {
            StoreError::Protocol(e.to_string())
        }
    }
}

/// The widget token secret every node shares: made by the first node that asks, then kept, so
/// OBS URLs survive restarts.
pub async fn shared_secret(con: &mut Connection, keys: &Keys) -> Result<String, StoreError> {
    let fresh = crate::auth::random_secret();
    let _: Value = redis::cmd("SET")
        .arg(keys.secret())
        .arg(&fresh)
        .arg("NX")
        .query_async(con)
        .await?;
    let secret: Option<String> = redis::cmd("GET")
        .arg(keys.secret())
        .query_async(con)
        .await?;
    secret.ok_or_else(|| StoreError::Protocol("the shared secret vanished".into()))
}

impl RedisStore {
    /// Connects both connections. Snapshots other nodes publish arrive on `notices`.
    pub async fn connect(
        target: &Target,
        keys: Keys,
        rules: Rules,
        node: &str,
        notices: mpsc::UnboundedSender<Notice>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let mut con = target.connect(None).await?;
        load_library(&mut con).await?;
        let watches = Watches::start(target, keys.clone(), node.into(), notices.clone()).await?;
        let core = Arc::new(Core {
            con,
            calls: OnceLock::new(),
            making_calls: AtomicBool::new(false),
            target: target.clone(),
            keys,
            rules,
            node: node.into(),
            metrics,
            clock: AtomicU64::new(0),
        });
        let sweeper = tokio::spawn(sweep_dead_nodes(core.clone(), notices)).abort_handle();
        Ok(Self {
            core,
            watches,
            sweeper,
        })
    }

    /// The command connection, for start-up work such as migrations.
    pub fn connection(&self) -> Connection {
        self.core.con.clone()
    }

    /// The widget token secret every node shares.
    pub async fn shared_secret(&self) -> Result<String, StoreError> {
        shared_secret(&mut self.core.con.clone(), &self.core.keys).await
    }

    /// Tests only: every call runs at `now` (ms) instead of at Redis's clock, so the script's
    /// timing rules can be held to the pure machine's without sleeping. `None`: Redis's clock.
    #[doc(hidden)]
    pub fn set_clock_for_tests(&self, now: Option<u64>) {
        self.core.clock.store(now.unwrap_or(0), Ordering::Relaxed);
    }

    /// A node was found dead: its widgets for the receiver are gone, and the alert in flight goes
    /// back to the queue if no other widget is live.
    pub async fn sweep(&self, receiver: &ReceiverId, dead: &str) -> Result<Snapshot, StoreError> {
        self.core
            .transition(receiver, Function::Sweep, &[dead])
            .await
    }

    /// Makes the connection that transitions use on the calling thread's runtime, once per
    /// store; the first HTTP worker calls it as it starts.
    ///
    /// A multiplexed connection is driven by a task on the thread that made it, and a call from
    /// another thread is handed to that task and its reply handed back: two cross-thread
    /// wake-ups a call, the largest single cost of a node on the Redis path (docs/benchmarks.md).
    /// Driven on a worker, the calls of that worker's widgets and publishers never leave its
    /// thread, and all transitions still pipeline on one connection.
    pub fn drive_calls_here(&self) {
        if self.core.making_calls.swap(true, Ordering::AcqRel) {
            return;
        }
        let core = self.core.clone();
        // Ends when the connection is made or the worker's runtime stops.
        tokio::spawn(async move {
            loop {
                match core.target.connect(None).await {
                    Ok(con) => {
                        let _ = core.calls.set(con);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not connect for transitions; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

impl Core {
    /// Calls one function of the library for a receiver.
    async fn run(
        &self,
        receiver: &ReceiverId,
        function: Function,
        idempotency_key: Option<&str>,
        args: &[&str],
    ) -> Result<Value, StoreError> {
        let call = self.fcall(receiver, function, idempotency_key, args);
        self.call(function, call).await
    }

    /// Sends a call of `function`, loading the library again if Redis lacks it.
    async fn call(&self, function: Function, call: redis::Cmd) -> Result<Value, StoreError> {
        let mut con = self.calls.get().unwrap_or(&self.con).clone();
        let started = std::time::Instant::now();
        let mut reply = call.query_async(&mut con).await;
        if matches!(&reply, Err(e) if is_function_missing(e)) {
            // Nothing ran: load the library and call once more.
            reply = match load_library(&mut con).await {
                Ok(()) => call.query_async(&mut con).await,
                Err(e) => return Err(e),
            };
        }
        self.metrics
            .store_call(function.label(), started.elapsed(), reply.is_err());
        Ok(reply?)
    }

    /// `FCALL` of one of the library's functions, written straight into one command: KEYS,
    /// then the node's constants, then the function's own arguments. (`redis::Script`'s
    /// invocation allocated for every argument and copied them again; with the keys formatted
    /// apiece, that was some twenty allocations a transition.)
    fn fcall(
        &self,
        receiver: &ReceiverId,
        function: Function,
        idempotency_key: Option<&str>,
        args: &[&str],
    ) -> redis::Cmd {
        const FIXED_ARGS: usize = 7;
        let keys = RECEIVER_KEYS.len() + usize::from(idempotency_key.is_some());
        let bytes = 256 + args.iter().map(|a| a.len()).sum::<usize>();
        let mut call = redis::Cmd::with_capacity(3 + keys + FIXED_ARGS + args.len(), bytes);
        call.arg("FCALL").arg(function.name()).arg(keys);
        self.keys.receiver(receiver, idempotency_key, |key| {
            call.arg(key);
        });
        call.arg(&*self.node)
            .arg(self.keys.events(receiver))
            .arg(self.rules.start_timeout.as_millis() as u64)
            .arg(self.rules.ack_grace.as_millis() as u64)
            .arg(PRESENCE_TTL.as_millis() as u64)
            .arg(self.con.publish_command());
        self.clock_arg(&mut call);
        for a in args {
            call.arg(*a);
        }
        call
    }

    /// The time argument: empty for Redis's own clock, or the one a test set.
    fn clock_arg(&self, call: &mut redis::Cmd) {
        match self.clock.load(Ordering::Relaxed) {
            0 => call.arg(""),
            now => call.arg(now),
        };
    }

    async fn transition(
        &self,
        receiver: &ReceiverId,
        function: Function,
        args: &[&str],
    ) -> Result<Snapshot, StoreError> {
        parse_snapshot(self.run(receiver, function, None, args).await?)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn publish(
        &self,
        alert: &AlertRecord,
        idempotency_key: Option<&str>,
    ) -> Result<Publish, StoreError> {
        // The stored value carries what the script needs without decoding JSON: the duration
        // and how many times the alert was sent (none yet).
        let value = format!("{} 0 {}", alert.duration_ms, alert.json);
        let max_queue = self.core.rules.max_queue.to_string();
        let ttl = IDEMPOTENCY_TTL.as_secs().to_string();
        let reply = self
            .core
            .run(
                &alert.receiver,
                Function::Publish,
                idempotency_key,
                &[&alert.id, &value, &max_queue, &ttl],
            )
            .await?;
        let Value::Array(items) = reply else {
            return Err(protocol("publish", &reply));
        };
        let mut items = items.into_iter();
        match (
            items.next().as_ref().and_then(text),
            items.next(),
            items.next(),
        ) {
            (Some("accepted"), Some(position), Some(snapshot)) => Ok(Publish::Accepted {
                position: int(&position)?,
                snapshot: parse_snapshot(snapshot)?,
            }),
            (Some("duplicate"), Some(id), Some(position)) => Ok(Publish::Duplicate {
                id: text(&id)
                    .ok_or_else(|| protocol("publish", &id))?
                    .to_owned(),
                position: int(&position)?,
            }),
            (Some("full"), None, None) => Ok(Publish::QueueFull),
            _ => Err(StoreError::Protocol("publish: unexpected reply".into())),
        }
    }

    async fn widgets(
        &self,
        receiver: &ReceiverId,
        change: WidgetChange,
    ) -> Result<Snapshot, StoreError> {
        let (change, count) = match change {
            WidgetChange::Joined => ("joined", 0),
            WidgetChange::Left => ("left", 0),
            WidgetChange::Refresh(n) => ("refresh", n),
            WidgetChange::Withdrawn => ("withdrawn", 0),
        };
        let max = self.core.rules.max_widgets.to_string();
        let reply = self
            .core
            .run(
                receiver,
                Function::Widgets,
                None,
                &[change, &count.to_string(), &max],
            )
            .await?;
        if matches!(&reply, Value::Array(items) if items.len() == 1) {
            return Err(StoreError::TooManyWidgets(self.core.rules.max_widgets));
        }
        parse_snapshot(reply)
    }

    async fn started(&self, receiver: &ReceiverId, id: &str) -> Result<Snapshot, StoreError> {
        // The most frequent call is given only what it needs: the state key, the clock, the id
        // and the grace (a third of the arguments of the others, which Redis turns into Lua
        // strings on every call).
        let mut call = redis::Cmd::with_capacity(7, 128);
        call.arg("FCALL")
            .arg(Function::Started.name())
            .arg(1)
            .arg(self.core.keys.state(receiver));
        self.core.clock_arg(&mut call);
        call.arg(id)
            .arg(self.core.rules.ack_grace.as_millis() as u64);
        parse_snapshot(self.core.call(Function::Started, call).await?)
    }

    async fn done(&self, receiver: &ReceiverId, id: &str) -> Result<Snapshot, StoreError> {
        self.core.transition(receiver, Function::Done, &[id]).await
    }

    async fn check(&self, receiver: &ReceiverId, id: &str) -> Result<Snapshot, StoreError> {
        self.core.transition(receiver, Function::Check, &[id]).await
    }

    async fn status(&self, receiver: &ReceiverId) -> Result<Status, StoreError> {
        let reply = self.core.run(receiver, Function::Status, None, &[]).await?;
        match reply {
            Value::Array(items) if items.len() == 3 => Ok(Status {
                queued: int(&items[0])?,
                widgets: int(&items[1])?,
                in_flight: text(&items[2]).map(Into::into),
            }),
            other => Err(protocol("status", &other)),
        }
    }

    async fn watch(&self, receiver: &ReceiverId) -> Result<(), StoreError> {
        self.watches.watch(receiver).await
    }

    async fn unwatch(&self, receiver: &ReceiverId) {
        self.watches.unwatch(receiver)
    }

    /// Both connections answer: a node is ready only when the one its transitions use is.
    async fn ping(&self) -> Result<(), StoreError> {
        for con in [Some(&self.core.con), self.core.calls.get()]
            .into_iter()
            .flatten()
        {
            let _: String = redis::cmd("PING").query_async(&mut con.clone()).await?;
        }
        Ok(())
    }
}

/// How often a node says it is alive, and looks for nodes that stopped saying so.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node silent this long is dead: a SIGKILL, a crash, a lost machine.
const NODE_TTL: Duration = Duration::from_secs(15);

/// Keeps this node's heartbeat, and clears up after dead nodes: for every receiver a dead node
/// held widgets for, its report is dropped at once, which puts an alert in flight that nobody
/// else can see back at the head of the queue (rule f). Widgets that reconnected elsewhere
/// already have it (rule e), and keep it: they count. Any number of nodes may sweep the same
/// dead node; every step is idempotent.
async fn sweep_dead_nodes(core: Arc<Core>, notices: mpsc::UnboundedSender<Notice>) {
    let mut every = tokio::time::interval(HEARTBEAT);
    loop {
        every.tick().await;
        if let Err(e) = heartbeat_and_sweep(&core, &notices).await {
            tracing::warn!(error = %e, "node heartbeat or sweep failed");
        }
    }
}

async fn heartbeat_and_sweep(
    core: &Core,
    notices: &mpsc::UnboundedSender<Notice>,
) -> Result<(), StoreError> {
    let mut con = core.con.clone();
    let keys = &core.keys;
    // Separate commands, not a pipeline: on a cluster these keys live in different slots.
    let () = redis::cmd("SET")
        .arg(keys.node(&core.node))
        .arg(1)
        .arg("PX")
        .arg(NODE_TTL.as_millis() as u64)
        .query_async(&mut con)
        .await?;
    let () = redis::cmd("SADD")
        .arg(keys.nodes())
        .arg(&*core.node)
        .query_async(&mut con)
        .await?;
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.nodes())
        .query_async(&mut con)
        .await?;
    for node in nodes.iter().filter(|n| n.as_str() != &*core.node) {
        let alive: bool = redis::cmd("EXISTS")
            .arg(keys.node(node))
            .query_async(&mut con)
            .await?;
        if alive {
            continue;
        }
        let held: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.node_receivers(node))
            .query_async(&mut con)
            .await?;
        tracing::warn!(
            node,
            receivers = held.len(),
            "a node stopped; sweeping its receivers"
        );
        for receiver in held.iter().filter_map(|r| ReceiverId::parse(r).ok()) {
            let snapshot = core.transition(&receiver, Function::Sweep, &[node]).await?;
            let _ = notices.send(Notice::Changed { receiver, snapshot });
        }
        let () = redis::cmd("DEL")
            .arg(keys.node_receivers(node))
            .query_async(&mut con)
            .await?;
        let () = redis::cmd("SREM")
            .arg(keys.nodes())
            .arg(node)
            .query_async(&mut con)
            .await?;
    }
    Ok(())
}

/// This node's subscriptions to receivers' event channels.
///
/// `watch` and `unwatch` only count; one task turns the counts into SUBSCRIBE and UNSUBSCRIBE,
/// one receiver at a time and reading the count when it acts, so a quick leave and join can
/// never end unsubscribed while a widget is here. The same task restores every subscription
/// after the connection drops.
struct Watches {
    counts: Arc<Mutex<HashMap<ReceiverId, usize>>>,
    requests: mpsc::UnboundedSender<WatchRequest>,
}

enum WatchRequest {
    /// Make the receiver's subscription match its count, and say when it does.
    Sync(ReceiverId, Option<oneshot::Sender<Result<(), StoreError>>>),
    /// The connection dropped, and its subscriptions with it.
    Resubscribe,
}

/// How often a node retries restoring its subscriptions while Redis is away.
const RESUBSCRIBE_RETRY: Duration = Duration::from_millis(500);

impl Watches {
    async fn start(
        target: &Target,
        keys: Keys,
        node: Arc<str>,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<Self, StoreError> {
        let (requests, mut inbox) = mpsc::unbounded_channel();
        // The pusher lives inside the connection the task owns; a weak sender lets the task end
        // when the store is dropped.
        let pusher = pusher(
            keys.clone(),
            node.clone(),
            notices.clone(),
            requests.downgrade(),
        );
        let mut con = target.connect(Some(pusher)).await?;

        let counts: Arc<Mutex<HashMap<ReceiverId, usize>>> = Arc::default();
        let wanted = counts.clone();
        tokio::spawn(async move {
            let mut subscribed: HashSet<ReceiverId> = HashSet::new();
            while let Some(request) = inbox.recv().await {
                match request {
                    WatchRequest::Sync(receiver, ack) => {
                        let want = lock(&wanted).get(&receiver).is_some_and(|n| *n > 0);
                        let channel = keys.events(&receiver);
                        // The node's set of receivers tells a sweeping node what to clear if
                        // this one dies.
                        let held = keys.node_receivers(&node);
                        let result = if want && !subscribed.contains(&receiver) {
                            let added = redis::cmd("SADD")
                                .arg(&held)
                                .arg(receiver.as_str())
                                .query_async::<()>(&mut con)
                                .await;
                            match added {
                                Ok(()) => con.subscribe(&channel).await.map(|()| {
                                    subscribed.insert(receiver);
                                }),
                                Err(e) => Err(e),
                            }
                        } else if !want && subscribed.contains(&receiver) {
                            let removed = con.unsubscribe(&channel).await;
                            if removed.is_ok() {
                                let _ = redis::cmd("SREM")
                                    .arg(&held)
                                    .arg(receiver.as_str())
                                    .query_async::<()>(&mut con)
                                    .await;
                                subscribed.remove(&receiver);
                            }
                            removed
                        } else {
                            Ok(())
                        };
                        if let Err(e) = &result {
                            tracing::warn!(error = %e, channel, "changing a subscription failed");
                        }
                        if let Some(ack) = ack {
                            let _ = ack.send(result.map_err(Into::into));
                        }
                    }
                    WatchRequest::Resubscribe => {
                        let channels: Vec<String> =
                            subscribed.iter().map(|r| keys.events(r)).collect();
                        // Retried until Redis answers; a command is also what makes the
                        // manager reconnect once its own retries are spent.
                        loop {
                            let mut result = redis::cmd("PING")
                                .query_async::<String>(&mut con)
                                .await
                                .map(drop);
                            // One by one: on a cluster each channel lives on its own shard.
                            for channel in &channels {
                                if result.is_ok() {
                                    result = con.subscribe(channel).await;
                                }
                            }
                            match result {
                                Ok(()) => break,
                                Err(e) => tracing::debug!(error = %e, "resubscribing failed"),
                            }
                            if inbox.is_closed() {
                                return;
                            }
                            tokio::time::sleep(RESUBSCRIBE_RETRY).await;
                        }
                        // Redis may have lost the node's set of receivers with the rest.
                        if !subscribed.is_empty() {
                            let _ = redis::cmd("SADD")
                                .arg(keys.node_receivers(&node))
                                .arg(
                                    subscribed
                                        .iter()
                                        .map(ReceiverId::as_str)
                                        .collect::<Vec<_>>(),
                                )
                                .query_async::<()>(&mut con)
                                .await;
                        }
                        tracing::info!(
                            channels = channels.len(),
                            "pub/sub restored; re-reading receivers"
                        );
                        // Whatever was published while the connection was down was missed.
                        let _ = notices.send(Notice::Resync);
                    }
                }
            }
        });
        Ok(Self { counts, requests })
    }

    async fn watch(&self, receiver: &ReceiverId) -> Result<(), StoreError> {
        *lock(&self.counts).entry(receiver.clone()).or_default() += 1;
        let (ack, done) = oneshot::channel();
        let sent = self
            .requests
            .send(WatchRequest::Sync(receiver.clone(), Some(ack)));
        let result = match sent {
            Ok(()) => done
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("subscriber stopped".into()))),
            Err(_) => Err(StoreError::Unavailable("subscriber stopped".into())),
        };
        if result.is_err() {
            self.unwatch(receiver);
        }
        result
    }

    fn unwatch(&self, receiver: &ReceiverId) {
        {
            let mut counts = lock(&self.counts);
            if let Some(n) = counts.get_mut(receiver) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(receiver);
                }
            }
        }
        let _ = self
            .requests
            .send(WatchRequest::Sync(receiver.clone(), None));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns pushes on the subscriber connection into notices, and a dropped connection into a
/// request to restore its subscriptions.
fn pusher(
    keys: Keys,
    node: Arc<str>,
    notices: mpsc::UnboundedSender<Notice>,
    watches: mpsc::WeakUnboundedSender<WatchRequest>,
) -> Pusher {
    Box::new(move |push: PushInfo| {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(notice) = parse_notice(&keys, &node, &push.data) {
                    let _ = notices.send(notice);
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("the pub/sub connection to Redis dropped; reconnecting");
                if let Some(watches) = watches.upgrade() {
                    let _ = watches.send(WatchRequest::Resubscribe);
                }
            }
            _ => {}
        }
        Ok(())
    })
}

/// `<origin node> <seq> <id or -> <attempt> <started> <ms to deadline> <alert json>`, as
/// `finish()` in `receiver.lua` publishes it. A node's own messages are skipped: it already
/// applied the snapshot its call returned.
fn parse_notice(keys: &Keys, node: &str, data: &[Value]) -> Option<Notice> {
    let [channel, payload] = data else {
        return None;
    };
    let receiver = keys.receiver_of_events(text(channel)?)?;
    // Borrowed: only the alert's JSON is copied, once, into the snapshot.
    let payload = text(payload)?;
    let mut parts = payload.splitn(7, ' ');
    let origin = parts.next()?;
    if origin == node {
        return None;
    }
    let seq = parts.next()?.parse().ok()?;
    let id = parts.next()?;
    let attempt = parts.next()?.parse().ok()?;
    let started = parts.next()? == "1";
    let remaining = Duration::from_millis(parts.next()?.parse().ok()?);
    let json = parts.next()?;
    let flight = (id != "-").then(|| Flight {
        id: id.into(),
        attempt,
        started,
        remaining,
        alert: (!json.is_empty()).then(|| json.into()),
    });
    Some(Notice::Changed {
        receiver,
        snapshot: Snapshot {
            seq,
            flight,
            events: Vec::new(),
        },
    })
}

fn parse_snapshot(v: Value) -> Result<Snapshot, StoreError> {
    let items = match v {
        Value::Array(items) if items.len() == 7 => items,
        other => return Err(protocol("snapshot", &other)),
    };
    // unwrap: the length was checked just above.
    let [seq, id, attempt, started, remaining, json, events]: [Value; 7] =
        items.try_into().expect("seven items");
    let flight = match text(&id) {
        None => None,
        Some(id) => Some(Flight {
            id: id.into(),
            attempt: int(&attempt)? as u32,
            started: int(&started)? == 1,
            remaining: Duration::from_millis(int(&remaining)?),
            // Taken, not copied: the alert is the one large part of a reply.
            alert: match json {
                Value::BulkString(bytes) => String::from_utf8(bytes).ok().map(Into::into),
                _ => None,
            },
        }),
    };
    Ok(Snapshot {
        seq: int(&seq)?,
        flight,
        events: text(&events)
            .map(|e| e.split(' ').filter_map(Event::parse).collect())
            .unwrap_or_default(),
    })
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn int(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| protocol("integer", v)),
        _ => Err(protocol("integer", v)),
    }
}

fn protocol(what: &str, v: &Value) -> StoreError {
    StoreError::Protocol(format!("{what}: unexpected reply {v:?}"))
}
