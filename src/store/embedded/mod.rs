//! The embedded store, for a single node with no Redis: a map of receivers in this process's
//! memory, each changed only by the pure state machine ([`machine`]), and, unless it is made
//! [`EmbeddedStore::in_memory`], a SQLite database in the data dir ([`disk`]) that keeps every
//! change before it is answered. A 202 means the alert is on disk.
//!
//! # How a transition runs
//!
//! Under one `std::sync::Mutex` (each transition is one [`machine::apply`] and never awaits,
//! so a plain mutex is both correct and cheaper than an async one): apply the command, turn
//! what it changed into rows (`Kept::rows_of`), and hand them to the writer thread. Then, with the
//! lock let go, wait for the commit that holds them. Rows reach the writer in the order the
//! transitions were applied, since they are sent under the lock; the writer takes every job
//! waiting when it wakes into one transaction (group commit), so under load many transitions
//! share one commit, and with `--durability full` one sync. A transition that wrote nothing
//! still waits for the commits of its receiver's transitions before it, if any, so nothing is
//! answered from a state the disk may not keep.
//!
//! If a commit fails (a full disk), the map is read back from the database, which the failed
//! transaction left as it was: memory never runs ahead of the disk for long, and the callers of
//! the failed transitions are told nothing happened.
//!
//! At start the map is loaded from the database. An alert that was in flight goes back to the
//! head of its queue, since no widget is connected yet: it is sent again with `attempt + 1`
//! once one is, as the Redis store does when a node dies.

pub mod disk;

use crate::store::{DesignsPut, Versioned, DESIGN_VERSIONS_KEPT};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::oneshot;

use self::disk::{Database, Durability, OpenError, Row};
use super::history::{Page, Record};
use super::machine::{self, Change, Command, Lane, Millis, Outcome, Queued, Receiver};
use super::{Answered, Call, CallObserver, Rules, Status, Store, StoreError, Unobserved, Waiting};
use crate::alert::ReceiverId;
use crate::auth::{Generations, Purpose};

/// The one node the embedded store serves, as its widget reports name it.
const NODE: &str = "embedded";

/// Most transitions one commit takes.
const MAX_BATCH: usize = 1024;

/// How often the writer tidies the database (see [`Database::tidy`]), busy or idle.
const TIDY_EVERY: Duration = Duration::from_secs(2);
/// Most pages (4 KiB) handed back to the file system at one tidy, and only while free pages are
/// more than a quarter of the file: a 100,000-alert queue's worth within a minute of it
/// draining, in steps short enough not to be felt (moving a page writes it to the WAL).
const TIDY_PAGES: u32 = 500;
/// How often the writer deletes the rows receivers are done with, and the most receivers it
/// sweeps at once: often and few, so no sweep holds the writer long.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
const SWEEP_RECEIVERS: usize = 100;

pub struct EmbeddedStore {
    rules: Rules,
    observer: Arc<dyn CallObserver>,
    clock: Arc<Clock>,
    receivers: Arc<Receivers>,
    /// None: in memory only.
    writer: Option<Writer>,
}

/// What a data dir keeps of the node itself.
pub struct NodeSecrets {
    pub widget_secret: String,
    pub publish_key: String,
}

impl EmbeddedStore {
    /// A store that keeps nothing on disk: for tests and benchmarks, and `--in-memory`.
    pub fn in_memory(rules: Rules) -> Self {
        Self {
            rules,
            observer: Arc::new(Unobserved),
            clock: Arc::default(),
            receivers: Arc::default(),
            writer: None,
        }
    }

    /// The store of a data dir: takes the dir for this node, loads what it keeps, and puts any
    /// alert that was in flight back at the head of its queue.
    pub fn open(
        dir: &Path,
        durability: Durability,
        rules: Rules,
    ) -> Result<(Self, NodeSecrets), OpenError> {
        Self::open_with(dir, durability, rules, Clock::default(), None)
    }

    /// [`EmbeddedStore::open`] with its clock held at `now` from the start (ms since the
    /// epoch), so that what it loads is judged at that time: for tests of timing rules.
    pub fn open_at_for_tests(
        dir: &Path,
        durability: Durability,
        rules: Rules,
        now: Millis,
    ) -> Result<(Self, NodeSecrets), OpenError> {
        let clock = Clock::default();
        clock.fixed.store(now, Ordering::Relaxed);
        Self::open_with(dir, durability, rules, clock, None)
    }

    /// `max_pages` caps the database's size (`PRAGMA max_page_count`), for a test of a full
    /// disk.
    fn open_with(
        dir: &Path,
        durability: Durability,
        rules: Rules,
        clock: Clock,
        max_pages: Option<u64>,
    ) -> Result<(Self, NodeSecrets), OpenError> {
        let mut db = Database::open(dir, durability)?;
        let shown = dir.display().to_string();
        let sql = |error| OpenError::Sql {
            dir: shown.clone(),
            error,
        };
        if let Some(pages) = max_pages {
            db.cap_pages(pages).map_err(sql)?;
        }
        let secrets = NodeSecrets {
            widget_secret: db
                .node_setting("widget_secret", crate::auth::random_secret)
                .map_err(sql)?,
            publish_key: db
                .node_setting("publish_key", crate::auth::random_publish_key)
                .map_err(sql)?,
        };
        let clock = Arc::new(clock);
        let loaded = db.load(clock.now()).map_err(sql)?;
        let mut map = HashMap::with_capacity(loaded.len());
        let (mut queued, mut in_flight) = (0, 0);
        let mut rows = Vec::new();
        for (receiver, l) in loaded {
            let mut kept = Kept::from(l);
            queued += kept.r.queued() as usize;
            if kept.r.flight.is_some() {
                in_flight += 1;
                let command = Command::Sweep { node: NODE };
                rows.extend(kept.apply(&receiver, command, clock.now(), &rules).1);
            }
            map.insert(receiver, kept);
        }
        db.write(&rows.iter().collect::<Vec<_>>()).map_err(sql)?;
        db.tidy(clock.now(), TIDY_PAGES, false).map_err(sql)?;
        tracing::info!(
            data_dir = %shown, receivers = map.len(), queued, in_flight,
            "using the embedded store"
        );
        let settings = db.settings().map_err(sql)?;
        let designs = db.designs().map_err(sql)?;
        let generations = db.generations().map_err(sql)?;
        let history = db.history(rules.history).map_err(sql)?;
        let receivers = Arc::new(Receivers {
            map: Mutex::new(Map {
                receivers: map,
                settings,
                designs,
                generations,
                history,
                ..Map::default()
            }),
        });
        // Rows left below a head before the restart are deleted as the writer tidies, and
        // history past its length.
        let done_with = {
            let map = receivers.lock();
            let with_history = map.history.keys();
            map.receivers.keys().chain(with_history).cloned().collect()
        };
        let writer = Writer::start(
            db,
            receivers.clone(),
            clock.clone(),
            done_with,
            rules.history,
        );
        let store = Self {
            rules,
            observer: Arc::new(Unobserved),
            clock,
            receivers,
            writer: Some(writer),
        };
        Ok((store, secrets))
    }

    /// Changes what `change` changes of the map, under its lock, and keeps the row it answers:
    /// answered once the row is committed. For what the node keeps of a receiver besides its
    /// queue (settings, token generations), outside the machine.
    async fn keep(
        &self,
        receiver: &ReceiverId,
        call: Call,
        change: impl FnOnce(&mut Map) -> Row,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let commit = {
            let mut map = self.receivers.lock();
            let row = change(&mut map);
            self.writer.as_ref().map(|writer| {
                *map.pending.entry(receiver.clone()).or_default() += 1;
                writer.send(receiver.clone(), vec![row])
            })
        };
        self.settled(call, started, commit).await
    }

    /// Waits for the commit a call's rows went in, if any, and measures the call: an error says
    /// whether the change was undone (memory read back from the disk) or may yet stand.
    async fn settled(
        &self,
        call: Call,
        started: Instant,
        commit: Option<oneshot::Receiver<Committed>>,
    ) -> Result<(), StoreError> {
        let committed = match commit {
            None => Ok(()),
            Some(commit) => commit.await.unwrap_or_else(|_| {
                Err(CommitFailed {
                    message: "the database's writer has stopped".into(),
                    undone: false,
                })
            }),
        };
        self.observer
            .observe(call, started.elapsed(), committed.is_err());
        match committed {
            Ok(()) => Ok(()),
            Err(f) if f.undone => Err(StoreError::Unavailable(f.message)),
            Err(f) => Err(StoreError::OutcomeUnknown(f.message)),
        }
    }

    /// Reports how long each call took, as the Redis store does.
    pub fn observed_by(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Holds the store's clock at `now` (ms since the epoch), or lets it follow the wall clock
    /// again: for tests of timing rules.
    pub fn set_clock_for_tests(&self, now: Option<Millis>) {
        self.clock.fixed.store(now.unwrap_or(0), Ordering::Relaxed);
    }

    /// Applies one command to a receiver; the commit that keeps it, if there is a disk.
    fn transition(
        &self,
        receiver: &ReceiverId,
        command: Command<'_>,
    ) -> (Outcome, Option<oneshot::Receiver<Committed>>) {
        let mut map = self.receivers.lock();
        let now = self.clock.now();
        let Map {
            receivers,
            seq_floor,
            pending,
            history,
            ..
        } = &mut *map;
        let kept = receivers.entry(receiver.clone()).or_insert_with(|| Kept {
            r: Receiver {
                seq: *seq_floor,
                ..Receiver::default()
            },
            ..Kept::default()
        });
        let (outcome, commit) = match &self.writer {
            Some(writer) => {
                let (outcome, rows) = kept.apply(receiver, command, now, &self.rules);
                // Nothing to write and nothing of this receiver's waiting to be committed: the
                // answer holds only what is on disk, so it need not wait for the writer. (The
                // most frequent case: `started`, which writes nothing.) Otherwise the job goes
                // in line, rows or not, and the answer waits for the commits before it.
                if rows.is_empty() && !pending.contains_key(receiver) {
                    (outcome, None)
                } else {
                    *pending.entry(receiver.clone()).or_default() += 1;
                    (outcome, Some(writer.send(receiver.clone(), rows)))
                }
            }
            None => {
                let outcome = machine::apply(&mut kept.r, command, now, &self.rules);
                kept.r.changes.clear();
                (outcome, None)
            }
        };
        if !outcome.recorded.is_empty() {
            let kept = history.entry(receiver.clone()).or_default();
            for record in &outcome.recorded {
                kept.push_front(record.clone());
            }
            kept.truncate(self.rules.history as usize);
        }
        if kept.r.is_idle(now) {
            *seq_floor = (*seq_floor).max(kept.r.seq);
            receivers.remove(receiver);
        }
        (outcome, commit)
    }
}

/// Every receiver the store holds.
#[derive(Default)]
struct Receivers {
    map: Mutex<Map>,
}

#[derive(Default)]
struct Map {
    receivers: HashMap<ReceiverId, Kept>,
    /// The highest `seq` of any receiver forgotten so far in this process. A receiver made
    /// again starts from here, so its `seq` never goes back to a value a hub has already seen.
    /// (A restart starts hubs afresh, and new receivers count from the clock.)
    seq_floor: u64,
    /// Jobs sent to the writer and not yet committed, per receiver (only those with some).
    pending: HashMap<ReceiverId, u32>,
    /// Each receiver's moderation settings, token generations and history (newest first, at
    /// most `Rules::history`); kept apart from the receivers, which are forgotten when idle.
    settings: HashMap<ReceiverId, Arc<str>>,
    /// Each receiver's designs, newest version first (at most `DESIGN_VERSIONS_KEPT`).
    designs: HashMap<ReceiverId, VecDeque<Versioned>>,
    generations: HashMap<ReceiverId, Generations>,
    history: HashMap<ReceiverId, VecDeque<Record>>,
}

impl Map {
    /// The writer committed (or failed) these jobs.
    fn settled(&mut self, batch: &[Job]) {
        for job in batch {
            if let Some(n) = self.pending.get_mut(&job.receiver) {
                *n -= 1;
                if *n == 0 {
                    self.pending.remove(&job.receiver);
                }
            }
        }
    }
}

impl Receivers {
    fn lock(&self) -> MutexGuard<'_, Map> {
        // A panic while holding the lock cannot leave a receiver half-changed in a way the
        // rules can't read, so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A receiver, and where its alerts' rows sit on disk (see
/// `migrations/sqlite/0001_initial.sql` and `0003_controls.sql`).
struct Kept {
    r: Receiver,
    /// The `pos` of the normal lane's first row.
    head: i64,
    /// The `pos` of the priority lane's first row.
    priority_head: i64,
    /// The `pos` of the row of the alert in flight, while there is one.
    flight_pos: Option<i64>,
    /// The receiver has its row on disk. A receiver made again after it was forgotten counts
    /// on from the `seq` it was made with, which its first row keeps even if that command
    /// moved nothing.
    has_row: bool,
}

impl Default for Kept {
    fn default() -> Self {
        Self {
            r: Receiver::default(),
            head: 0,
            priority_head: disk::PRIORITY_BASE,
            flight_pos: None,
            has_row: false,
        }
    }
}

impl From<disk::Loaded> for Kept {
    fn from(l: disk::Loaded) -> Self {
        Self {
            r: l.receiver,
            head: l.head,
            priority_head: l.priority_head.unwrap_or(disk::PRIORITY_BASE),
            flight_pos: l.flight_pos,
            has_row: l.has_row,
        }
    }
}

impl Kept {
    /// Applies one command; its outcome, and the rows that keep what it changed.
    fn apply(
        &mut self,
        receiver: &ReceiverId,
        command: Command<'_>,
        now: Millis,
        rules: &Rules,
    ) -> (Outcome, Vec<Row>) {
        let before = Mark::of(&self.r);
        let lens_before = [self.r.priority.len(), self.r.queue.len()];
        let outcome = machine::apply(&mut self.r, command, now, rules);
        let mut rows = self.rows_of(receiver, before, lens_before, now);
        rows.extend(outcome.recorded.iter().map(|record| Row::History {
            receiver: receiver.clone(),
            record: record.clone(),
        }));
        (outcome, rows)
    }

    /// The rows that keep what the last command changed: the alert rows it added (from the
    /// machine's [`Change`]s), the receiver's own row if its `seq`, a lane's head, its alert in
    /// flight or its pause moved, and the idempotency keys it remembered. Each lane is a run of
    /// `pos` from its head; the two runs never meet (see [`disk::lane_of`]), so a `pos` says
    /// its lane.
    ///
    /// No alert's row is deleted here. An alert sent keeps its row, which the receiver's row
    /// then points at (`flight_pos`); put back at the head, it lands on that same row again.
    /// Rows below the head but the one in flight are done with: the writer deletes them later,
    /// many at a time (`Database::sweep`), so a completion writes only the receiver's row.
    fn rows_of(
        &mut self,
        receiver: &ReceiverId,
        before: Mark,
        lens_before: [usize; 2],
        now: Millis,
    ) -> Vec<Row> {
        let mut rows = Vec::new();
        // Indexed by `slot`: the priority lane, then the normal one.
        let slot = |lane: Lane| match lane {
            Lane::Priority => 0,
            Lane::Normal => 1,
        };
        let heads_before = [self.priority_head, self.head];
        let mut heads = heads_before;
        let mut lens = lens_before.map(|l| l as i64);
        let mut touched = Vec::new();
        let mut pushed = Vec::new();
        let mut popped = None;
        for change in std::mem::take(&mut self.r.changes) {
            match change {
                Change::PushedBack(lane) => {
                    let i = slot(lane);
                    touched.push(heads[i] + lens[i]);
                    pushed.push(heads[i] + lens[i]);
                    lens[i] += 1;
                }
                Change::PushedFront(lane) => {
                    let i = slot(lane);
                    heads[i] -= 1;
                    lens[i] += 1;
                    touched.push(heads[i]);
                    pushed.push(heads[i]);
                }
                Change::PoppedFront(lane) => {
                    let i = slot(lane);
                    touched.push(heads[i]);
                    popped = Some(heads[i]);
                    heads[i] += 1;
                    lens[i] -= 1;
                }
                Change::Held => {
                    if let Some(held) = self.r.held.back() {
                        rows.push(Row::Held {
                            receiver: receiver.clone(),
                            held: held.clone(),
                        });
                    }
                }
                Change::Unheld(id) => rows.push(Row::Unheld {
                    receiver: receiver.clone(),
                    id,
                }),
                Change::Remembered(key) => {
                    if let Some(seen) = self.r.idempotency.get(&key) {
                        let seen = seen.clone();
                        rows.push(Row::Remembered {
                            receiver: receiver.clone(),
                            key,
                            seen,
                        });
                    }
                }
            }
        }
        debug_assert_eq!(lens[0], self.r.priority.len() as i64);
        debug_assert_eq!(lens[1], self.r.queue.len() as i64);
        [self.priority_head, self.head] = heads;
        let flight_pos_before = self.flight_pos;
        let after = Mark::of(&self.r);
        self.flight_pos = match &self.r.flight {
            None => None,
            // A replay put an alert at the head of the priority lane, onto the row of the alert
            // in flight, which came from there: that row moves to just below the normal lane's
            // head, where nothing is ever put back (rows there are done with but the one in
            // flight).
            Some(f)
                if after.same_alert(&before)
                    && flight_pos_before.is_some_and(|pos| {
                        disk::lane_of(pos) == Lane::Priority && pos >= heads[0]
                    }) =>
            {
                let pos = heads[1] - 1;
                rows.push(Row::Queued {
                    receiver: receiver.clone(),
                    pos,
                    entry: Queued {
                        alert: f.alert.clone(),
                        sent: f.attempt - 1,
                        trail: f.trail.as_sent(),
                    },
                });
                Some(pos)
            }
            Some(_) if after.same_alert(&before) => flight_pos_before,
            // Sent in this command: it is the head the command took.
            Some(f) => Some(popped.unwrap_or_else(|| {
                // The machine sends only what it takes from the queue; were that ever not so,
                // the alert gets a row of its own just ahead of everything.
                let head = heads[0];
                let pos = head.min(flight_pos_before.unwrap_or(head)) - 1;
                rows.push(Row::Queued {
                    receiver: receiver.clone(),
                    pos,
                    entry: Queued {
                        alert: f.alert.clone(),
                        sent: 0,
                        trail: f.trail.clone(),
                    },
                });
                pos
            })),
        };
        // A position touched twice in one command (taken, then put back) is written once, as
        // it ends.
        touched.sort_unstable();
        touched.dedup();
        for pos in touched {
            let lane = disk::lane_of(pos);
            let head = heads[slot(lane)];
            let waiting = (pos >= head)
                .then(|| self.r.lane(lane).get((pos - head) as usize).cloned())
                .flatten();
            let row = match waiting {
                Some(entry) => Row::Queued {
                    receiver: receiver.clone(),
                    pos,
                    entry,
                },
                // The alert just sent: its row stays, now pointed at as in flight; it is written
                // only if this same command queued it.
                None if Some(pos) == self.flight_pos => match &self.r.flight {
                    Some(f) if pushed.contains(&pos) => Row::Queued {
                        receiver: receiver.clone(),
                        pos,
                        entry: Queued {
                            alert: f.alert.clone(),
                            sent: f.attempt - 1,
                            trail: f.trail.clone(),
                        },
                    },
                    _ => continue,
                },
                // Below the head: done with. The receiver's row moves `head_pos` past it, and
                // the writer deletes such rows later, many at a time.
                None if pos < head => continue,
                None => Row::Unqueued {
                    receiver: receiver.clone(),
                    pos,
                },
            };
            rows.push(row);
        }
        if self.r.is_idle(now) {
            rows.push(Row::Forget(receiver.clone()));
        } else if after != before || !self.has_row || heads != heads_before {
            self.has_row = true;
            let flight = self.r.flight.as_ref().zip(self.flight_pos);
            rows.push(Row::Receiver {
                receiver: receiver.clone(),
                seq: self.r.seq,
                head: self.head,
                priority_head: self.priority_head,
                flight: flight.map(|(f, pos)| disk::FlightRow {
                    pos,
                    attempt: f.attempt,
                    // Not when it started: a restart sends it again, and `started` writes
                    // nothing (the most frequent call, so it waits for no commit).
                    trail: f.trail.as_sent(),
                }),
                paused: self.r.paused,
            });
        }
        rows
    }
}

/// What of a receiver its own row keeps, to tell whether a command changed it: its `seq`, and
/// which alert is in flight at which attempt. Not whether it started, nor its deadline: at start
/// every alert that was in flight is sent again, so `started` writes nothing.
#[derive(PartialEq)]
struct Mark(u64, Option<(usize, u32)>, bool);

impl Mark {
    fn of(r: &Receiver) -> Self {
        let flight = r.flight.as_ref().map(|f| {
            let id = Arc::as_ptr(&f.alert.id) as *const u8 as usize;
            (id, f.attempt)
        });
        Mark(r.seq, flight, r.paused)
    }

    /// Both have the same alert in flight (perhaps sent again, or started since).
    fn same_alert(&self, other: &Mark) -> bool {
        matches!((&self.1, &other.1), (Some(a), Some(b)) if a.0 == b.0)
    }
}

/// The store's clock: milliseconds since the Unix epoch, so deadlines and idempotency keys
/// kept on disk mean the same after a restart; never going back within a process.
#[derive(Default)]
struct Clock {
    /// Set by tests; 0 when not.
    fixed: AtomicU64,
    last: AtomicU64,
}

impl Clock {
    fn now(&self) -> Millis {
        let fixed = self.fixed.load(Ordering::Relaxed);
        if fixed != 0 {
            return fixed;
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis);
        self.last.fetch_max(wall, Ordering::Relaxed).max(wall)
    }
}

/// What became of a job's commit.
type Committed = Result<(), CommitFailed>;

#[derive(Clone, Debug)]
struct CommitFailed {
    message: String,
    /// Memory was read back from the disk: the transition did not happen.
    undone: bool,
}

/// The rows of one transition, and who waits for their commit.
struct Job {
    receiver: ReceiverId,
    rows: Vec<Row>,
    done: oneshot::Sender<Committed>,
}

/// The thread that owns the database and commits what transitions send it.
struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(
        db: Database,
        receivers: Arc<Receivers>,
        clock: Arc<Clock>,
        done_with: HashSet<ReceiverId>,
        history: u32,
    ) -> Self {
        let (jobs, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cuebox-sqlite".into())
            .spawn(move || write_loop(db, rx, &receivers, &clock, done_with, history))
            .expect("a thread for the database");
        Self {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// Hands a transition's rows to the writer, under the receivers' lock, so in the order the
    /// transitions were applied.
    fn send(&self, receiver: ReceiverId, rows: Vec<Row>) -> oneshot::Receiver<Committed> {
        let (done, committed) = oneshot::channel();
        if let Some(jobs) = &self.jobs {
            // If the writer is gone, the job is dropped and its caller hears so.
            let _ = jobs.send(Job {
                receiver,
                rows,
                done,
            });
        }
        committed
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Let the writer commit what it was given, then close the database and free the data
        // dir's lock.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(
    mut db: Database,
    jobs: mpsc::Receiver<Job>,
    receivers: &Receivers,
    clock: &Clock,
    mut done_with: HashSet<ReceiverId>,
    history: u32,
) {
    let (mut tidied, mut swept) = (Instant::now(), Instant::now());
    // Whether anything was written since the last tidy, and whether the WAL was emptied since.
    let (mut wrote, mut emptied) = (false, false);
    loop {
        if swept.elapsed() >= SWEEP_EVERY && !done_with.is_empty() {
            // Receivers whose head moved since, a bounded number at a time.
            let sweep: Vec<ReceiverId> = done_with.iter().take(SWEEP_RECEIVERS).cloned().collect();
            for receiver in &sweep {
                done_with.remove(receiver);
            }
            if let Err(e) = db.sweep(&sweep, history) {
                tracing::warn!(error = %e, "could not delete rows the embedded store is done with");
            }
            (wrote, swept) = (true, Instant::now());
        }
        if tidied.elapsed() >= TIDY_EVERY {
            let idle = !wrote && !emptied;
            match db.tidy(clock.now(), TIDY_PAGES, idle) {
                Ok(moved) => emptied = idle && !moved,
                Err(e) => {
                    tracing::warn!(error = %e, "could not tidy the embedded store's database")
                }
            }
            (wrote, tidied) = (false, Instant::now());
        }
        let mut wait = TIDY_EVERY.saturating_sub(tidied.elapsed());
        if !done_with.is_empty() {
            wait = wait.min(SWEEP_EVERY.saturating_sub(swept.elapsed()));
        }
        let first = match jobs.recv_timeout(wait) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let rows: Vec<&Row> = batch.iter().flat_map(|j| &j.rows).collect();
        if rows.is_empty() {
            finish(batch, Ok(()), receivers);
            continue;
        }
        wrote = true;
        for row in &rows {
            // A receiver's head moved, or its history grew: the next sweep tidies both.
            if let Row::Receiver { receiver, .. } | Row::History { receiver, .. } = row {
                if !done_with.contains(receiver) {
                    done_with.insert(receiver.clone());
                }
            }
        }
        match db.write(&rows) {
            Ok(()) => finish(batch, Ok(()), receivers),
            Err(e) => {
                drop(rows);
                let failed = undo(&db, &jobs, &mut batch, receivers, clock, history, &e);
                finish(batch, Err(failed), receivers);
            }
        }
    }
}

fn finish(batch: Vec<Job>, committed: Committed, receivers: &Receivers) {
    receivers.lock().settled(&batch);
    for job in batch {
        let _ = job.done.send(committed.clone());
    }
}

/// After a failed commit: every transition not yet committed fails with it, and the map is
/// read back from the database, which the failed transaction left as it was. Widgets are not
/// kept on disk, so each receiver's reports stay as they are in memory.
fn undo(
    db: &Database,
    jobs: &mpsc::Receiver<Job>,
    batch: &mut Vec<Job>,
    receivers: &Receivers,
    clock: &Clock,
    history: u32,
    error: &rusqlite::Error,
) -> CommitFailed {
    let message = format!(
        "the data dir {} could not be written: {error}",
        db.dir().display()
    );
    tracing::error!(%message, "a commit failed; reading the receivers back from the database");
    // Under the lock no transition runs, so every job applied but not committed is in the
    // channel by now.
    let mut map = receivers.lock();
    while let Ok(job) = jobs.try_recv() {
        batch.push(job);
    }
    let undone = match db.load(clock.now()) {
        Ok(loaded) => {
            let mut fresh: HashMap<ReceiverId, Kept> = loaded
                .into_iter()
                .map(|(receiver, l)| (receiver, Kept::from(l)))
                .collect();
            for (receiver, kept) in map.receivers.drain() {
                if !kept.r.presence.is_empty() {
                    fresh.entry(receiver).or_default().r.presence = kept.r.presence;
                }
            }
            map.receivers = fresh;
            let kept = db
                .settings()
                .and_then(|s| Ok((s, db.designs()?, db.generations()?, db.history(history)?)));
            match kept {
                Ok((settings, designs, generations, history)) => {
                    map.settings = settings;
                    map.designs = designs;
                    map.generations = generations;
                    map.history = history;
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "the settings could not be read back");
                    false
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "the database could not be read back either");
            false
        }
    };
    CommitFailed { message, undone }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn apply(
        &self,
        receiver: &ReceiverId,
        command: Command<'_>,
    ) -> Result<Answered, StoreError> {
        let (call, started) = (command.call(), Instant::now());
        let (outcome, commit) = self.transition(receiver, command);
        self.settled(call, started, commit).await?;
        Ok(outcome.answered())
    }

    fn node(&self) -> &str {
        NODE
    }

    async fn waiting(
        &self,
        receiver: &ReceiverId,
        offset: u64,
        limit: u64,
    ) -> Result<Waiting, StoreError> {
        let started = Instant::now();
        let waiting = match self.receivers.lock().receivers.get(receiver) {
            None => Waiting {
                total: 0,
                alerts: Vec::new(),
                held: Vec::new(),
            },
            Some(kept) => Waiting {
                total: kept.r.queued(),
                alerts: kept
                    .r
                    .waiting()
                    .skip(offset.try_into().unwrap_or(usize::MAX))
                    .take(limit.try_into().unwrap_or(usize::MAX))
                    .map(|q| q.alert.json.clone())
                    .collect(),
                held: kept
                    .r
                    .held
                    .iter()
                    .map(|h| h.queued.alert.json.clone())
                    .collect(),
            },
        };
        self.observer.observe(Call::Queue, started.elapsed(), false);
        Ok(waiting)
    }

    async fn history(
        &self,
        receiver: &ReceiverId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let started = Instant::now();
        let page = match self.receivers.lock().history.get(receiver) {
            None => Page::default(),
            Some(kept) => Page::of(kept.iter(), before, limit),
        };
        self.observer
            .observe(Call::History, started.elapsed(), false);
        Ok(page)
    }

    async fn settings(&self, receiver: &ReceiverId) -> Result<Option<Arc<str>>, StoreError> {
        Ok(self.receivers.lock().settings.get(receiver).cloned())
    }

    async fn put_settings(&self, receiver: &ReceiverId, json: &str) -> Result<(), StoreError> {
        let json: Arc<str> = json.into();
        self.keep(receiver, Call::Settings, |map| {
            map.settings.insert(receiver.clone(), json.clone());
            Row::Settings {
                receiver: receiver.clone(),
                json,
            }
        })
        .await
    }

    async fn designs(
        &self,
        receiver: &ReceiverId,
        limit: usize,
    ) -> Result<Vec<Versioned>, StoreError> {
        let map = self.receivers.lock();
        let kept = map.designs.get(receiver).into_iter().flatten();
        Ok(kept.take(limit).cloned().collect())
    }

    async fn put_designs(
        &self,
        receiver: &ReceiverId,
        json: &str,
        expected: Option<u64>,
    ) -> Result<DesignsPut, StoreError> {
        let started = Instant::now();
        let (answer, commit) = {
            let mut map = self.receivers.lock();
            let kept = map.designs.entry(receiver.clone()).or_default();
            let newest = kept.front().map_or(0, |v| v.version);
            if expected.is_some_and(|e| e != newest) {
                (DesignsPut::Stale(newest), None)
            } else {
                let designs = Versioned {
                    version: newest + 1,
                    at_ms: self.clock.now(),
                    json: json.into(),
                };
                kept.push_front(designs.clone());
                kept.truncate(DESIGN_VERSIONS_KEPT);
                let commit = self.writer.as_ref().map(|writer| {
                    *map.pending.entry(receiver.clone()).or_default() += 1;
                    let row = Row::Designs {
                        receiver: receiver.clone(),
                        designs,
                    };
                    writer.send(receiver.clone(), vec![row])
                });
                (DesignsPut::Kept(newest + 1), commit)
            }
        };
        self.settled(Call::Designs, started, commit).await?;
        Ok(answer)
    }

    async fn generations(&self, receiver: &ReceiverId) -> Result<Generations, StoreError> {
        let map = self.receivers.lock();
        Ok(map.generations.get(receiver).copied().unwrap_or_default())
    }

    async fn rotate(
        &self,
        receiver: &ReceiverId,
        purpose: Purpose,
    ) -> Result<Generations, StoreError> {
        let mut rotated = Generations::default();
        self.keep(receiver, Call::Tokens, |map| {
            let g = map.generations.entry(receiver.clone()).or_default();
            match purpose {
                Purpose::Widget => g.widget += 1,
                Purpose::Dashboard => g.dashboard += 1,
            }
            rotated = *g;
            Row::Tokens {
                receiver: receiver.clone(),
                generations: *g,
            }
        })
        .await?;
        Ok(rotated)
    }

    async fn status(&self, receiver: &ReceiverId) -> Result<Status, StoreError> {
        let (now, started) = (self.clock.now(), Instant::now());
        let status = match self.receivers.lock().receivers.get(receiver) {
            None => Status {
                queued: 0,
                held: 0,
                paused: false,
                in_flight: None,
                in_flight_trail: None,
                widgets: 0,
                widgets_on_air: 0,
                previews: 0,
            },
            Some(kept) => Status {
                queued: kept.r.queued(),
                held: kept.r.held.len() as u64,
                paused: kept.r.paused,
                in_flight: kept.r.flight.as_ref().map(|f| f.alert.json.clone()),
                in_flight_trail: kept.r.flight.as_ref().map(|f| f.trail.clone()),
                widgets: u64::from(kept.r.live_widgets(now)),
                widgets_on_air: u64::from(kept.r.widgets_on_air(now)),
                previews: u64::from(kept.r.previews(now)),
            },
        };
        self.observer
            .observe(Call::Status, started.elapsed(), false);
        Ok(status)
    }

    async fn routed(&self, route: u32) -> Result<Vec<ReceiverId>, StoreError> {
        let map = self.receivers.lock();
        let mut routed: Vec<ReceiverId> = map
            .receivers
            .keys()
            .chain(map.history.keys())
            .filter(|r| crate::alert::route(r) == route)
            .cloned()
            .collect();
        routed.sort();
        routed.dedup();
        Ok(routed)
    }

    async fn locate(
        &self,
        receiver: &ReceiverId,
        id: &str,
    ) -> Result<Option<machine::Whereabouts>, StoreError> {
        let (now, started) = (self.clock.now(), Instant::now());
        let found = self
            .receivers
            .lock()
            .receivers
            .get(receiver)
            .and_then(|kept| machine::locate(&kept.r, id, now, &self.rules));
        self.observer
            .observe(Call::Status, started.elapsed(), false);
        Ok(found)
    }

    async fn watch(&self, _receiver: &ReceiverId) -> Result<(), StoreError> {
        // One node: every change is made here, so there is nothing to hear about.
        Ok(())
    }

    async fn unwatch(&self, _receiver: &ReceiverId) {}

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::NewAlert;
    use crate::store::{Publish, WidgetChange};

    fn rules() -> Rules {
        Rules {
            start_timeout: Duration::from_secs(5),
            ack_grace: Duration::from_secs(5),
            max_queue: 10_000,
            max_widgets: 4,
            history: 500,
        }
    }

    /// A data dir of the test's own, removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn alert(n: usize) -> crate::alert::AlertRecord {
        // As long as a message may be, so the capped database fills within a hundred alerts.
        let body = serde_json::json!({ "receiver": "alice", "message": format!("{n} {}", "x".repeat(480)) });
        NewAlert::parse(body.to_string().as_bytes(), None)
            .expect("a valid alert")
            .into_record()
    }

    /// A full disk: the publish that cannot be committed is refused as not taken, the store
    /// goes on answering from what the disk holds, and a restart finds exactly what was
    /// accepted.
    #[tokio::test]
    async fn a_commit_that_fails_leaves_memory_as_the_disk_has_it() {
        let dir =
            Dir(std::env::temp_dir().join(format!("cuebox-unit-full-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        let probe = Database::open(&dir.0, Durability::Normal).unwrap();
        let pages = probe.page_count().unwrap();
        drop(probe);
        let (store, _) = EmbeddedStore::open_with(
            &dir.0,
            Durability::Normal,
            rules(),
            Clock::default(),
            Some(pages + 12),
        )
        .unwrap();
        let alice = ReceiverId::parse("alice").unwrap();
        let mut accepted = 0;
        let refused = loop {
            match store.publish(&alert(accepted), None).await {
                Ok(Publish::Accepted { .. }) => accepted += 1,
                Ok(other) => panic!("{other:?}"),
                Err(e) => break e,
            }
            assert!(accepted < 1000, "the database never filled");
        };
        assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");
        assert!(accepted > 0);
        assert_eq!(store.status(&alice).await.unwrap().queued, accepted as u64);
        // Still answering, from what is on disk: the head goes out to a widget.
        let snap = store.widgets(&alice, WidgetChange::Joined).await;
        let snap = snap.expect("a transition that fits still commits");
        assert_eq!(snap.flight.map(|f| f.attempt), Some(1));
        drop(store);

        let (store, _) = EmbeddedStore::open(&dir.0, Durability::Normal, rules()).unwrap();
        let status = store.status(&alice).await.unwrap();
        // The one sent went back to the queue at the restart.
        assert_eq!(status.queued, accepted as u64);
    }
}
