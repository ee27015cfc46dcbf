//! The embedded store's database: SQLite in the data dir, in WAL mode. It keeps what the pure
//! machine's receivers hold that must outlive the process (each receiver's `seq` and alert in
//! flight, its queue row by row, its idempotency keys) and the node's own secrets. No rule runs
//! here: SQLite only keeps the machine's state, and this file is all the SQL there is.
//!
//! The schema is `migrations/sqlite/`, applied at open in order; the version reached is
//! SQLite's `user_version`. One node per data dir: [`Database::open`] holds an exclusive lock on
//! `cuebox.lock` for as long as the database is open.

use crate::store::{Versioned, DESIGN_VERSIONS_KEPT};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::alert::ReceiverId;
use crate::auth::Generations;
use crate::store::history::{Mark, Record, Trail};
use crate::store::machine::{Held, InFlight, Lane, Millis, Queued, Receiver, Remembered, Stored};

/// The database file in the data dir.
pub const DB_FILE: &str = "cuebox.db";
/// Held exclusively by the node that has the data dir open.
pub const LOCK_FILE: &str = "cuebox.lock";

/// Every migration, oldest first: a new schema adds a file in `migrations/sqlite/` and a line
/// here. Its version is its place in the list, counting from 1.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        "0002_node_secrets",
        include_str!("../../../migrations/sqlite/0002_node_secrets.sql"),
    ),
    (
        "0003_controls",
        include_str!("../../../migrations/sqlite/0003_controls.sql"),
    ),
    (
        "0004_history",
        include_str!("../../../migrations/sqlite/0004_history.sql"),
    ),
    (
        "0005_designs",
        include_str!("../../../migrations/sqlite/0005_designs.sql"),
    ),
];

/// Where the priority lane's rows start (`migrations/sqlite/0003_controls.sql`): far below the
/// normal lane's, which start at 0 and count down only for alerts put back at the head by a
/// store of before the lanes.
pub const PRIORITY_BASE: i64 = -(1 << 60);

/// The lane a row's `pos` is in.
pub fn lane_of(pos: i64) -> Lane {
    if pos < PRIORITY_BASE / 2 {
        Lane::Priority
    } else {
        Lane::Normal
    }
}

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit survives the process being killed, and the
    /// last moments before a power cut may be lost.
    Normal,
    /// `synchronous=FULL`: every commit is synced to disk before it is answered.
    Full,
}

/// Why the data dir could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "another cuebox node is using the data dir {0} (it holds {0}/cuebox.lock). The embedded \
         store serves one node; to run several, give them one Redis (--redis-url)"
    )]
    InUse(String),
    #[error("the data dir {dir}: {error}")]
    Io { dir: String, error: std::io::Error },
    #[error("the database in {dir}: {error}")]
    Sql { dir: String, error: rusqlite::Error },
    #[error(
        "the database in {dir} has schema version {found}, newer than this build knows ({known}): \
         run the newer cuebox, or restore a backup"
    )]
    TooNew { dir: String, found: i64, known: i64 },
}

/// One row to write, as a transition changed it.
#[derive(Debug)]
pub enum Row {
    /// The receiver's `seq`, the `pos` of the head of each lane, its alert in flight, and
    /// whether it is paused.
    Receiver {
        receiver: ReceiverId,
        seq: u64,
        head: i64,
        priority_head: i64,
        flight: Option<FlightRow>,
        paused: bool,
    },
    /// The receiver is idle and forgotten: no queue, nothing in flight; its rows all go.
    Forget(ReceiverId),
    /// The receiver's moderation settings.
    Settings {
        receiver: ReceiverId,
        json: Arc<str>,
    },
    /// A new version of the receiver's designs; versions older than the last
    /// [`DESIGN_VERSIONS_KEPT`] go.
    Designs {
        receiver: ReceiverId,
        designs: Versioned,
    },
    /// The receiver's token generations.
    Tokens {
        receiver: ReceiverId,
        generations: Generations,
    },
    /// An alert's row: waiting, or in flight if the receiver's row points at it.
    Queued {
        receiver: ReceiverId,
        pos: i64,
        entry: Queued,
    },
    Unqueued {
        receiver: ReceiverId,
        pos: i64,
    },
    Remembered {
        receiver: ReceiverId,
        key: String,
        seen: Remembered,
    },
    /// An alert held for approval.
    Held {
        receiver: ReceiverId,
        held: Held,
    },
    /// A held alert, approved or denied.
    Unheld {
        receiver: ReceiverId,
        id: Arc<str>,
    },
    /// An alert left the receiver for good.
    History {
        receiver: ReceiverId,
        record: Record,
    },
}

/// The alert in flight as the receiver's row keeps it: where its alert's row is, and its
/// attempt. Nothing of its timing: a restart sends it again.
#[derive(Debug, PartialEq)]
pub struct FlightRow {
    pub pos: i64,
    pub attempt: u32,
    /// Its trail as of this send.
    pub trail: Trail,
}

/// A receiver as loaded: the machine's state, the positions of its lanes' heads, and that of
/// its alert in flight.
#[derive(Default)]
pub struct Loaded {
    pub receiver: Receiver,
    pub head: i64,
    /// None: the lane's first row, or [`PRIORITY_BASE`] if it has none.
    pub priority_head: Option<i64>,
    pub flight_pos: Option<i64>,
    /// It has a row in `receivers`.
    pub has_row: bool,
    /// Its row's `head_pos`, if it has one.
    pub head_pos: Option<i64>,
}

/// The open database of a data dir, and the lock that keeps it this node's.
pub struct Database {
    conn: Connection,
    dir: PathBuf,
    lock: File,
}

impl Drop for Database {
    /// Lets go of the data dir explicitly rather than by closing the lock's file: the lock
    /// belongs to the open file, which a process forked meanwhile (for a moment, until it runs
    /// its program) shares, so closing ours alone could leave the dir held. Seen in the tests,
    /// which start redis-server and browsers from other threads while stores open and close.
    fn drop(&mut self) {
        let _ = self.lock.unlock();
    }
}

impl Database {
    /// Opens (making it if need be) the data dir's database, applies the migrations it lacks,
    /// and takes the data dir for this node.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, OpenError> {
        let shown = dir.display().to_string();
        let io = |error| OpenError::Io {
            dir: shown.clone(),
            error,
        };
        // Only its owner may read it: it holds the publish key and the widget secret.
        let mut made = std::fs::DirBuilder::new();
        made.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut made, 0o700);
        made.create(dir).map_err(io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(OpenError::InUse(shown)),
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let sql = |error| OpenError::Sql {
            dir: shown.clone(),
            error,
        };
        let mut conn = Connection::open(dir.join(DB_FILE)).map_err(sql)?;
        let fresh: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if fresh == 0 {
            // Only a database with no table yet takes this: pages freed by a drain go back to
            // the file system a little at a time (see tidy()).
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
                .map_err(sql)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        let synchronous = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(sql)?;
        // After a checkpoint the WAL file is cut back to this size rather than left at its
        // largest (a fill of 100,000 alerts, or a tidy, grows it past 16 MiB).
        conn.pragma_update(None, "journal_size_limit", 8 * 1024 * 1024)
            .map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        migrate(&mut conn).map_err(|e| match e {
            MigrateError::Sql(error) => sql(error),
            MigrateError::TooNew(found) => OpenError::TooNew {
                dir: shown.clone(),
                found,
                known: MIGRATIONS.len() as i64,
            },
        })?;
        Ok(Self {
            conn,
            dir: dir.to_owned(),
            lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Caps the database's size, so a test can fill it as a full disk would.
    pub(super) fn cap_pages(&self, pages: u64) -> rusqlite::Result<()> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
    }

    /// Pages the database has now.
    #[cfg(test)]
    pub(super) fn page_count(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    /// The node setting `name`, made with `make` and kept the first time it is asked for.
    pub fn node_setting(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> rusqlite::Result<String> {
        let kept: Option<String> = self
            .conn
            .query_row("SELECT value FROM node WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(value) = kept {
            return Ok(value);
        }
        let value = make();
        self.conn.execute(
            "INSERT INTO node (name, value) VALUES (?1, ?2)",
            params![name, value],
        )?;
        Ok(value)
    }

    /// Every receiver's token generations, where any was rotated.
    pub fn generations(&self) -> rusqlite::Result<HashMap<ReceiverId, Generations>> {
        read_generations(&self.conn)
    }

    /// Every receiver's moderation settings.
    pub fn settings(&self) -> rusqlite::Result<HashMap<ReceiverId, Arc<str>>> {
        let mut statement = self.conn.prepare("SELECT receiver, json FROM settings")?;
        let mut rows = statement.query([])?;
        let mut settings = HashMap::new();
        while let Some(row) = rows.next()? {
            if let Some(receiver) = receiver_of(row.get_ref(0)?.as_str()?) {
                settings.insert(receiver, row.get::<_, String>(1)?.into());
            }
        }
        Ok(settings)
    }

    /// Every receiver's designs, newest version first.
    pub fn designs(&self) -> rusqlite::Result<HashMap<ReceiverId, VecDeque<Versioned>>> {
        let mut statement = self.conn.prepare(
            "SELECT receiver, version, at_ms, json FROM designs ORDER BY receiver, version DESC",
        )?;
        let mut rows = statement.query([])?;
        let mut designs: HashMap<ReceiverId, VecDeque<Versioned>> = HashMap::new();
        while let Some(row) = rows.next()? {
            if let Some(receiver) = receiver_of(row.get_ref(0)?.as_str()?) {
                designs.entry(receiver).or_default().push_back(Versioned {
                    version: row.get::<_, i64>(1)? as u64,
                    at_ms: row.get::<_, i64>(2)? as u64,
                    json: row.get::<_, String>(3)?.into(),
                });
            }
        }
        Ok(designs)
    }

    /// Every receiver kept, with the idempotency keys still live at `now`.
    pub fn load(&self, now: Millis) -> rusqlite::Result<HashMap<ReceiverId, Loaded>> {
        let mut loaded: HashMap<ReceiverId, Loaded> = HashMap::new();
        // The alert in flight of each receiver, less the alert itself, which is in its row.
        let mut flights: HashMap<ReceiverId, FlightRow> = HashMap::new();
        let mut statement = self.conn.prepare(
            "SELECT receiver, seq, head_pos, flight_pos, flight_attempt, paused, priority_head, \
             flight_trail FROM receivers",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let Some(receiver) = receiver_of(row.get_ref(0)?.as_str()?) else {
                continue;
            };
            if let Some(pos) = row.get::<_, Option<i64>>(3)? {
                let flight = FlightRow {
                    pos,
                    attempt: row.get(4)?,
                    trail: Trail::from_kept(row.get::<_, Option<String>>(7)?.unwrap_or_default()),
                };
                flights.insert(receiver.clone(), flight);
            }
            let head: Option<i64> = row.get(2)?;
            let kept = loaded.entry(receiver).or_default();
            kept.receiver.seq = row.get::<_, i64>(1)? as u64;
            kept.receiver.paused = row.get(5)?;
            kept.priority_head = Some(row.get(6)?);
            kept.has_row = true;
            kept.head_pos = head;
            if let Some(head) = head {
                kept.head = head;
            }
        }
        let mut statement = self.conn.prepare(
            "SELECT receiver, pos, id, duration_ms, sent, json, trail FROM queue \
             ORDER BY receiver, pos",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let Some(receiver) = receiver_of(row.get_ref(0)?.as_str()?) else {
                continue;
            };
            let pos: i64 = row.get(1)?;
            let alert = Stored {
                id: row.get::<_, String>(2)?.into(),
                json: row.get::<_, String>(5)?.into(),
                duration_ms: row.get(3)?,
            };
            let trail = Trail::from_kept(row.get::<_, String>(6)?);
            let flight = flights.get(&receiver).filter(|f| f.pos == pos);
            let kept = loaded.entry(receiver).or_default();
            let lane = lane_of(pos);
            let head = match lane {
                Lane::Priority => kept.priority_head,
                Lane::Normal => kept.head_pos,
            };
            if flight.is_none() && head.is_some_and(|head| pos < head) {
                // Done with, not yet deleted.
                continue;
            }
            kept.receiver.ids.insert(alert.id.clone());
            if let Some(f) = flight {
                kept.flight_pos = Some(pos);
                // Not started, and past its deadline: the store sends it again at once.
                kept.receiver.flight = Some(InFlight {
                    alert,
                    attempt: f.attempt,
                    started: false,
                    deadline: 0,
                    trail: f.trail.clone(),
                });
                continue;
            }
            match lane {
                Lane::Priority if kept.priority_head.is_none() => kept.priority_head = Some(pos),
                Lane::Normal if kept.receiver.queue.is_empty() && kept.head_pos.is_none() => {
                    kept.head = pos
                }
                _ => {}
            }
            let sent = row.get(4)?;
            kept.receiver
                .lane(lane)
                .push_back(Queued { alert, sent, trail });
        }
        let mut statement = self.conn.prepare(
            "SELECT receiver, id, lane, approve_at, duration_ms, trail, json FROM held ORDER BY n",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let Some(receiver) = receiver_of(row.get_ref(0)?.as_str()?) else {
                continue;
            };
            let alert = Stored {
                id: row.get::<_, String>(1)?.into(),
                json: row.get::<_, String>(6)?.into(),
                duration_ms: row.get(4)?,
            };
            let lane = match row.get::<_, i64>(2)? {
                1 => Lane::Priority,
                _ => Lane::Normal,
            };
            let kept = loaded.entry(receiver).or_default();
            kept.receiver.ids.insert(alert.id.clone());
            kept.receiver.held.push_back(Held {
                queued: Queued {
                    alert,
                    sent: 0,
                    trail: Trail::from_kept(row.get::<_, String>(5)?),
                },
                lane,
                approve_at: row.get::<_, Option<i64>>(3)?.map(|t| t as u64),
            });
        }
        let mut statement = self.conn.prepare(
            "SELECT receiver, key, id, position, until_ms FROM idempotency WHERE until_ms > ?1",
        )?;
        let mut rows = statement.query([now as i64])?;
        while let Some(row) = rows.next()? {
            let Some(receiver) = receiver_of(row.get_ref(0)?.as_str()?) else {
                continue;
            };
            let seen = Remembered {
                id: row.get(2)?,
                position: row.get::<_, i64>(3)? as u64,
                until: row.get::<_, i64>(4)? as u64,
            };
            let kept = loaded.entry(receiver).or_default();
            kept.receiver.idempotency.insert(row.get(1)?, seen);
        }
        Ok(loaded)
    }

    /// Writes every row in one transaction.
    pub fn write(&mut self, rows: &[&Row]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for row in rows {
            match row {
                Row::Receiver {
                    receiver,
                    seq,
                    head,
                    priority_head,
                    flight,
                    paused,
                } => {
                    let mut put = tx.prepare_cached(
                        "INSERT INTO receivers (receiver, seq, head_pos, flight_pos, \
                         flight_attempt, paused, priority_head, flight_trail) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                         ON CONFLICT (receiver) DO UPDATE SET seq = ?2, head_pos = ?3, \
                         flight_pos = ?4, flight_attempt = ?5, paused = ?6, priority_head = ?7, \
                         flight_trail = ?8",
                    )?;
                    let f = flight.as_ref();
                    put.execute(params![
                        receiver.as_str(),
                        *seq as i64,
                        head,
                        f.map(|f| f.pos),
                        f.map(|f| f.attempt),
                        paused,
                        priority_head,
                        f.map(|f| f.trail.as_str())
                    ])?;
                }
                Row::Settings { receiver, json } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO settings (receiver, json) VALUES (?1, ?2)",
                    )?
                    .execute(params![receiver.as_str(), &**json])?;
                }
                Row::Designs { receiver, designs } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO designs (receiver, version, at_ms, json) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        receiver.as_str(),
                        designs.version as i64,
                        designs.at_ms as i64,
                        &*designs.json
                    ])?;
                    tx.prepare_cached("DELETE FROM designs WHERE receiver = ?1 AND version <= ?2")?
                        .execute(params![
                            receiver.as_str(),
                            designs.version as i64 - DESIGN_VERSIONS_KEPT as i64
                        ])?;
                }
                Row::Tokens {
                    receiver,
                    generations,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO tokens (receiver, widget, dashboard) \
                         VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![
                        receiver.as_str(),
                        generations.widget as i64,
                        generations.dashboard as i64
                    ])?;
                }
                Row::Forget(receiver) => {
                    tx.prepare_cached("DELETE FROM receivers WHERE receiver = ?1")?
                        .execute([receiver.as_str()])?;
                    tx.prepare_cached("DELETE FROM queue WHERE receiver = ?1")?
                        .execute([receiver.as_str()])?;
                }
                Row::Queued {
                    receiver,
                    pos,
                    entry,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO queue (receiver, pos, id, duration_ms, sent, json, \
                         trail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        receiver.as_str(),
                        pos,
                        &*entry.alert.id,
                        entry.alert.duration_ms,
                        entry.sent,
                        &*entry.alert.json,
                        entry.trail.as_str()
                    ])?;
                }
                Row::Held { receiver, held } => {
                    let lane = match held.lane {
                        Lane::Priority => 1,
                        Lane::Normal => 0,
                    };
                    let q = &held.queued;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO held (receiver, id, lane, approve_at, \
                         duration_ms, trail, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        receiver.as_str(),
                        &*q.alert.id,
                        lane,
                        held.approve_at.map(|t| t as i64),
                        q.alert.duration_ms,
                        q.trail.as_str(),
                        &*q.alert.json
                    ])?;
                }
                Row::Unheld { receiver, id } => {
                    tx.prepare_cached("DELETE FROM held WHERE receiver = ?1 AND id = ?2")?
                        .execute(params![receiver.as_str(), &**id])?;
                }
                Row::History { receiver, record } => {
                    tx.prepare_cached(
                        "INSERT INTO history (receiver, id, status, trail, json) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        receiver.as_str(),
                        &*record.id,
                        record.status.name(),
                        record.trail.as_str(),
                        &*record.json
                    ])?;
                }
                Row::Unqueued { receiver, pos } => {
                    tx.prepare_cached("DELETE FROM queue WHERE receiver = ?1 AND pos = ?2")?
                        .execute(params![receiver.as_str(), pos])?;
                }
                Row::Remembered {
                    receiver,
                    key,
                    seen,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO idempotency (receiver, key, id, position, until_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        receiver.as_str(),
                        key,
                        seen.id,
                        seen.position as i64,
                        seen.until as i64
                    ])?;
                }
            }
        }
        tx.commit()
    }

    /// Each receiver's newest `keep` history records (fewer where it has fewer), newest first.
    pub fn history(&self, keep: u32) -> rusqlite::Result<HashMap<ReceiverId, VecDeque<Record>>> {
        let mut statement = self
            .conn
            .prepare("SELECT receiver, id, status, trail, json FROM history ORDER BY n")?;
        let mut rows = statement.query([])?;
        let mut history: HashMap<ReceiverId, VecDeque<Record>> = HashMap::new();
        while let Some(row) = rows.next()? {
            let Some(receiver) = receiver_of(row.get_ref(0)?.as_str()?) else {
                continue;
            };
            let Some(status) = Mark::parse_status(row.get_ref(2)?.as_str()?) else {
                continue;
            };
            let record = Record {
                id: row.get::<_, String>(1)?.into(),
                status,
                trail: Trail::from_kept(row.get::<_, String>(3)?),
                json: row.get::<_, String>(4)?.into(),
            };
            let kept = history.entry(receiver).or_default();
            kept.push_front(record);
            kept.truncate(keep as usize);
        }
        Ok(history)
    }

    /// Deletes the rows these receivers are done with (below their `head_pos`, but the one in
    /// flight), and their history past its newest `keep` records, as the disk has them, in one
    /// transaction.
    pub fn sweep(&mut self, done_with: &[ReceiverId], keep: u32) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut sweep = tx.prepare_cached(
                "DELETE FROM queue WHERE receiver = ?1 AND pos IS NOT (SELECT flight_pos FROM \
                 receivers WHERE receiver = ?1) AND ((pos >= ?2 AND pos < (SELECT head_pos \
                 FROM receivers WHERE receiver = ?1)) OR (pos < ?2 AND pos < (SELECT \
                 priority_head FROM receivers WHERE receiver = ?1)))",
            )?;
            for receiver in done_with {
                sweep.execute(params![receiver.as_str(), PRIORITY_BASE / 2])?;
            }
            let mut trim = tx.prepare_cached(
                "DELETE FROM history WHERE receiver = ?1 AND n <= (SELECT n FROM history \
                 WHERE receiver = ?1 ORDER BY n DESC LIMIT 1 OFFSET ?2)",
            )?;
            for receiver in done_with {
                trim.execute(params![receiver.as_str(), keep])?;
            }
        }
        tx.commit()
    }

    /// Housekeeping, now and then: drops idempotency keys past their time, and, while free
    /// pages are over a quarter of the file (a large queue drained), hands up to `pages` of them
    /// back to the file system. A steady load reuses its free pages, so it pays nothing here.
    /// `idle`: nothing was written since the last tidy, so the WAL is then checkpointed and
    /// emptied. Answers whether it moved any page (so the WAL is not empty).
    pub fn tidy(&mut self, now: Millis, pages: u32, idle: bool) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached("DELETE FROM idempotency WHERE until_ms <= ?1")?
            .execute([now as i64])?;
        let count = |pragma: &str| -> rusqlite::Result<i64> {
            self.conn.query_row(pragma, [], |r| r.get(0))
        };
        let (free, total) = (count("PRAGMA freelist_count")?, count("PRAGMA page_count")?);
        let vacuum = free >= 256 && free * 4 >= total;
        if vacuum {
            let mut step = self
                .conn
                .prepare_cached(&format!("PRAGMA incremental_vacuum({pages})"))?;
            let mut freed = step.query([])?;
            while freed.next()?.is_some() {}
        }
        if idle {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(vacuum)
    }
}

fn receiver_of(s: &str) -> Option<ReceiverId> {
    // Every id was checked before it was written; one that no longer parses (a rule tightened
    // since) is left on disk rather than loaded.
    ReceiverId::parse(s).ok()
}

enum MigrateError {
    Sql(rusqlite::Error),
    TooNew(i64),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sql(e)
    }
}

/// Applies the migrations the database lacks, each in its own transaction with the version it
/// reaches.
fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(MigrateError::TooNew(version));
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(
            migration = name,
            "applied a migration to the embedded store"
        );
    }
    Ok(())
}

/// The widget secret kept in a data dir, read without opening the data dir for writing: for
/// `cuebox widget-url`, which may run while the node does.
fn read_generations(conn: &Connection) -> rusqlite::Result<HashMap<ReceiverId, Generations>> {
    let mut statement = conn.prepare("SELECT receiver, widget, dashboard FROM tokens")?;
    let mut rows = statement.query([])?;
    let mut generations = HashMap::new();
    while let Some(row) = rows.next()? {
        if let Some(receiver) = receiver_of(row.get_ref(0)?.as_str()?) {
            let g = Generations {
                widget: row.get::<_, i64>(1)? as u64,
                dashboard: row.get::<_, i64>(2)? as u64,
            };
            generations.insert(receiver, g);
        }
    }
    Ok(generations)
}

/// A receiver's token generations as the data dir keeps them, read-only (for `cuebox
/// widget-url` while the node runs); 0 where none was rotated, or the schema is older.
pub fn read_generations_of(dir: &Path, receiver: &ReceiverId) -> Result<Generations, String> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Ok(Generations::default());
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match read_generations(&conn) {
        Ok(mut all) => Ok(all.remove(receiver).unwrap_or_default()),
        // No table yet: a data dir of before rotation.
        Err(_) => Ok(Generations::default()),
    }
}

pub fn read_secret(dir: &Path) -> Result<Option<String>, String> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    conn.query_row(
        "SELECT value FROM node WHERE name = 'widget_secret'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| format!("{}: {e}", path.display()))
}
