//! Applies `migrations/redis/` to a Redis store at start.
//!
//! Each migration is a Lua script, run once, in order, under a lock so that nodes starting
//! together do not race; the version reached is kept at `{prefix}:schema:version`. A node meets a
//! layout newer than it knows with a clear refusal rather than guessing at keys it does not
//! understand.

use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::store::redis::keys::Keys;

pub struct Migration {
    pub version: u64,
    pub name: &'static str,
    pub script: &'static str,
}

/// Every migration, oldest first. A new layout adds a file in `migrations/redis/` and a line here.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        script: include_str!("../migrations/redis/0001_initial.lua"),
    },
    Migration {
        version: 2,
        name: "0002_queue_entries",
        script: include_str!("../migrations/redis/0002_queue_entries.lua"),
    },
    Migration {
        version: 3,
        name: "0003_controls",
        script: include_str!("../migrations/redis/0003_controls.lua"),
    },
    Migration {
        version: 4,
        name: "0004_history",
        script: include_str!("../migrations/redis/0004_history.lua"),
    },
    Migration {
        version: 5,
        name: "0005_started_mark",
        script: include_str!("../migrations/redis/0005_started_mark.lua"),
    },
];

/// The newest layout this build knows.
pub fn latest() -> u64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

const LOCK_TTL: Duration = Duration::from_secs(60);
const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the Redis key layout is version {found}, newer than this cuebox knows ({known}); \
         run a cuebox release that knows layout {found}, or another key prefix"
    )]
    TooNew { found: u64, known: u64 },
    #[error("another node has held the migration lock for over {0:?}; is one stuck?")]
    LockTimeout(Duration),
    #[error("the Redis key layout version {0:?} is not a number")]
    BadVersion(String),
    #[error("migration {name} failed: {source}")]
    Failed {
        name: &'static str,
        source: redis::RedisError,
    },
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Brings the layout under `keys` up to [`latest`]; returns the version now in place.
pub async fn run<C: ConnectionLike + Send>(con: &mut C, keys: &Keys) -> Result<u64, MigrateError> {
    let token = uuid::Uuid::new_v4().to_string();
    let waited = tokio::time::Instant::now();
    loop {
        let got: Option<String> = redis::cmd("SET")
            .arg(keys.schema_lock())
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64)
            .query_async(con)
            .await?;
        if got.is_some() {
            break;
        }
        if waited.elapsed() > LOCK_WAIT {
            return Err(MigrateError::LockTimeout(LOCK_WAIT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = migrate_locked(con, keys).await;
    // Release only our own lock: a compare-and-delete, atomic in a script.
    let release = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    );
    let _: Result<i64, _> = release
        .key(keys.schema_lock())
        .arg(&token)
        .invoke_async(con)
        .await;
    result
}

async fn migrate_locked<C: ConnectionLike + Send>(
    con: &mut C,
    keys: &Keys,
) -> Result<u64, MigrateError> {
    let found: Option<String> = redis::cmd("GET")
        .arg(keys.schema_version())
        .query_async(con)
        .await?;
    let mut version = match found {
        None => 0,
        Some(v) => v.parse().map_err(|_| MigrateError::BadVersion(v))?,
    };
    if version > latest() {
        return Err(MigrateError::TooNew {
            found: version,
            known: latest(),
        });
    }
    let from = version;
    let pending = MIGRATIONS.iter().filter(move |m| m.version > from);
    for m in pending {
        let _: redis::Value = redis::cmd("EVAL")
            .arg(m.script)
            .arg(0)
            .arg(keys.prefix())
            .query_async(con)
            .await
            .map_err(|source| MigrateError::Failed {
                name: m.name,
                source,
            })?;
        let _: () = redis::cmd("SET")
            .arg(keys.schema_version())
            .arg(m.version)
            .query_async(con)
            .await?;
        tracing::info!(migration = m.name, "applied key layout migration");
        version = m.version;
    }
    Ok(version)
}
