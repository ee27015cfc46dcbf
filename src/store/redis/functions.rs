//! The library of the rules (`receiver.lua`, Redis Functions) and the calls to its functions.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use redis::Value;

use super::clock::RedisClock;
use super::connection::{Connection, Target};
use super::keys::{Keys, RECEIVER_KEYS};
use super::replies::parse_snapshot;
use crate::alert::ReceiverId;
use crate::store::{Call, CallObserver, Rules, Snapshot, StoreError};

/// The library of the rules, loaded with `FUNCTION LOAD REPLACE` at start and whenever Redis
/// answers that a function is missing.
const LIBRARY: &str = include_str!("receiver.lua");

/// The library's function for each call (none for the settings, the designs and the history, read and
/// written with plain commands). The names carry the library's version, so that nodes of two versions can share a
/// Redis during a rolling deploy.
pub(super) fn function(call: Call) -> Option<&'static str> {
    Some(match call {
        Call::Publish => "cuebox_v6_publish",
        Call::Widgets => "cuebox_v6_widgets",
        Call::Done => "cuebox_v6_done",
        Call::Check => "cuebox_v6_check",
        Call::Sweep => "cuebox_v6_sweep",
        Call::Status => "cuebox_v6_status",
        Call::Pause => "cuebox_v6_pause",
        Call::Skip => "cuebox_v6_skip",
        Call::Clear => "cuebox_v6_clear",
        Call::Queue => "cuebox_v6_queue",
        Call::Tokens => "cuebox_v6_rotate",
        Call::Filtered => "cuebox_v6_record",
        // Deny and wake are measured under the same call: see `DENY` and `WAKE`.
        Call::Approval => APPROVE,
        // A start is one SET of its mark (see `RedisStore::mark_started`).
        Call::Settings
        | Call::History
        | Call::Feed
        | Call::Started
        | Call::Designs
        | Call::Topics => return None,
    })
}

/// The functions of the streamer's approvals, measured as [`Call::Approval`].
pub(super) const APPROVE: &str = "cuebox_v6_approve";
pub(super) const DENY: &str = "cuebox_v6_deny";
pub(super) const WAKE: &str = "cuebox_v6_wake";
/// A broadcast topic's log, measured as [`Call::Topics`].
pub(super) const TOPIC_APPEND: &str = "cuebox_v6_topic_append";
pub(super) const TOPIC_READ: &str = "cuebox_v6_topic_read";
/// Marks a dock open on a receiver's feed, measured as [`Call::Feed`].
pub(super) const DOCKS: &str = "cuebox_v6_docks";

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

/// Tells the stores of one process apart (tests run several nodes in one).
static STORES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The connections driven on this thread, by store: an HTTP worker's own (see
    /// [`super::RedisStore::drive_calls_here`]). They go with the thread, when no task of it is
    /// left to call; a connection driven on one worker and used by another would die with the
    /// first, under the calls of the second (a graceful stop lets each worker end on its own).
    static DRIVEN_HERE: RefCell<Vec<DrivenHere>> = const { RefCell::new(Vec::new()) };
}

struct DrivenHere {
    store: u64,
    con: Connection,
    /// Lives as long as the thread: [`Core::driven`] holds it weakly.
    _alive: Arc<()>,
}

/// What every function call needs, shared by the store and its sweeper task.
pub(super) struct Core {
    /// Which store of the process this is: the key of its connections in [`DRIVEN_HERE`].
    pub(super) id: u64,
    /// For start-up and background work, and for transitions on a thread that drives no
    /// connection of its own.
    pub(super) con: Connection,
    /// Every connection a worker drives, for readiness: a node is ready only when each answers
    /// whose worker still runs (one that panicked is replaced, and its connection is gone).
    pub(super) driven: Mutex<Vec<(Weak<()>, Connection)>>,
    pub(super) target: Target,
    pub(super) keys: Keys,
    pub(super) rules: Rules,
    pub(super) node: Arc<str>,
    pub(super) observer: Arc<dyn CallObserver>,
    /// The time every call runs at.
    pub(super) clock: RedisClock,
}

impl Core {
    pub(super) fn new_id() -> u64 {
        STORES.fetch_add(1, Ordering::Relaxed)
    }

    /// The connection calls made on this thread use: the one driven here, if any.
    pub(super) fn connection_here(&self) -> Connection {
        DRIVEN_HERE
            .with_borrow(|driven| {
                driven
                    .iter()
                    .find(|d| d.store == self.id)
                    .map(|d| d.con.clone())
            })
            .unwrap_or_else(|| self.con.clone())
    }

    /// Makes `con` the connection this thread's calls use.
    pub(super) fn drive_here(&self, con: Connection) {
        let alive = Arc::new(());
        self.driven_lock()
            .push((Arc::downgrade(&alive), con.clone()));
        DRIVEN_HERE.with_borrow_mut(|driven| {
            driven.retain(|d| d.store != self.id);
            driven.push(DrivenHere {
                store: self.id,
                con,
                _alive: alive,
            });
        });
    }

    /// The connections driven on threads that still run.
    pub(super) fn driven_connections(&self) -> Vec<Connection> {
        let mut driven = self.driven_lock();
        driven.retain(|(alive, _)| alive.strong_count() > 0);
        driven.iter().map(|(_, con)| con.clone()).collect()
    }

    fn driven_lock(&self) -> std::sync::MutexGuard<'_, Vec<(Weak<()>, Connection)>> {
        self.driven
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Calls one function of the library for a receiver; answers its reply and the time the
    /// call passed (answers give deadlines, and the node counts the time left from it).
    pub(super) async fn run(
        &self,
        receiver: &ReceiverId,
        function: Call,
        idempotency_key: Option<&str>,
        args: &[&str],
    ) -> Result<(Value, u64), StoreError> {
        let Some(name) = self::function(function) else {
            return Err(StoreError::Protocol(format!(
                "{} is not a function of the library",
                function.label()
            )));
        };
        // The functions that read the widgets hash every time are given it.
        let with_widgets = matches!(function, Call::Widgets | Call::Sweep | Call::Status);
        let now = self.clock.now();
        let call = self.fcall(receiver, name, with_widgets, idempotency_key, now, args);
        Ok((self.call(function, call).await?, now))
    }

    /// Sends a call of `function`, loading the library again if Redis lacks it.
    pub(super) async fn call(&self, function: Call, call: redis::Cmd) -> Result<Value, StoreError> {
        let mut con = self.connection_here();
        let started = std::time::Instant::now();
        let mut reply = call.query_async(&mut con).await;
        if matches!(&reply, Err(e) if is_function_missing(e)) {
            // Nothing ran: load the library and call once more.
            reply = match load_library(&mut con).await {
                Ok(()) => call.query_async(&mut con).await,
                Err(e) => return Err(e),
            };
        }
        self.observer
            .observe(function, started.elapsed(), reply.is_err());
        Ok(reply?)
    }

    /// `FCALL` of one of the library's functions, written straight into one command: KEYS,
    /// then the node's constants and the time, then the function's own arguments.
    /// (`redis::Script`'s invocation allocated for every argument and copied them again; with the
    /// keys formatted apiece, that was some twenty allocations a transition.)
    pub(super) fn fcall(
        &self,
        receiver: &ReceiverId,
        function: &str,
        with_widgets: bool,
        idempotency_key: Option<&str>,
        now: u64,
        args: &[&str],
    ) -> redis::Cmd {
        const FIXED_ARGS: usize = 4;
        let keys = RECEIVER_KEYS.len()
            + usize::from(with_widgets)
            + usize::from(idempotency_key.is_some());
        let bytes = 256 + args.iter().map(|a| a.len()).sum::<usize>();
        let mut call = redis::Cmd::with_capacity(3 + keys + FIXED_ARGS + args.len(), bytes);
        call.arg("FCALL").arg(function).arg(keys);
        self.keys
            .receiver(receiver, with_widgets, idempotency_key, |key| {
                call.arg(key);
            });
        call.arg(&*self.node)
            .arg(now)
            .arg(self.con.publish_command())
            .arg(now + self.rules.start_timeout.as_millis() as u64);
        for a in args {
            call.arg(*a);
        }
        call
    }

    pub(super) async fn transition(
        &self,
        receiver: &ReceiverId,
        function: Call,
        args: &[&str],
    ) -> Result<Snapshot, StoreError> {
        let (reply, now) = self.run(receiver, function, None, args).await?;
        parse_snapshot(reply, now)
    }
}
