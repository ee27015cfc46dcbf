//! What Redis answers, read into snapshots and notices.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::keys::Keys;
use crate::auth::Purpose;
use crate::store::{Event, Flight, Notice, Snapshot, StoreError};

/// `snapshot <origin node> <seq> <id or -> <attempt> <started> <ms to deadline> <docks: 1 while
/// some node has one open, else 0> <alert's queue entry>`, as `finish()` in `receiver.lua`
/// publishes it, or the same after `skip <origin node> <skipped id>` when the call skipped an
/// alert. A node's own messages are skipped: it already
/// applied the snapshot its call returned. A kind this node does not know is skipped too, so a
/// newer node may publish more kinds.
pub(super) fn parse_notice(keys: &Keys, node: &str, data: &[Value]) -> Option<Notice> {
    let [channel, payload] = data else {
        return None;
    };
    let channel = text(channel)?;
    if keys.is_topic_channel(channel) {
        return parse_broadcast(text(payload)?);
    }
    let receiver = keys.receiver_of_events(channel)?;
    // Borrowed: only the alert's JSON is copied, once, into the snapshot.
    let payload = text(payload)?;
    let (kind, rest) = payload.split_once(' ')?;
    let (origin, rest) = rest.split_once(' ')?;
    if origin == node {
        return None;
    }
    if kind == "feed" {
        return Some(Notice::Feed {
            receiver,
            payload: rest.to_owned(),
        });
    }
    if kind == "designs" {
        return Some(Notice::Designs { receiver });
    }
    if kind == "rotated" {
        let purpose = match rest {
            "widget" => Purpose::Widget,
            "dashboard" => Purpose::Dashboard,
            _ => return None,
        };
        return Some(Notice::Revoked { receiver, purpose });
    }
    let (skipped, rest) = match kind {
        "snapshot" => (None, rest),
        "skip" => {
            let (id, rest) = rest.split_once(' ')?;
            (Some(id.into()), rest)
        }
        _ => return None,
    };
    let mut parts = rest.splitn(7, ' ');
    let seq = parts.next()?.parse().ok()?;
    let id = parts.next()?;
    let attempt = parts.next()?.parse().ok()?;
    let started = parts.next()? == "1";
    let remaining = Duration::from_millis(parts.next()?.parse().ok()?);
    let docks = parts.next()? == "1";
    let (alert, duration) = given_alert(parts.next()?);
    let flight = (id != "-").then(|| Flight {
        id: id.into(),
        attempt,
        started,
        remaining,
        alert,
        duration,
    });
    Some(Notice::Changed {
        receiver,
        snapshot: Snapshot {
            seq,
            flight,
            events: Vec::new(),
            skipped,
            wake: None,
            docks,
        },
    })
}

/// `topic <origin node> <topic> <offset> <frame>`, as the library's `topic_append` publishes it.
/// A node's own are kept: every node, the one that published included, delivers a topic's
/// messages from this one stream, so every subscriber gets them in the order of their offsets.
fn parse_broadcast(payload: &str) -> Option<Notice> {
    let rest = payload.strip_prefix("topic ")?;
    let (_origin, rest) = rest.split_once(' ')?;
    let (topic, rest) = rest.split_once(' ')?;
    let (offset, frame) = rest.split_once(' ')?;
    Some(Notice::Broadcast(crate::topics::Sent {
        topic: crate::topics::Topic::parse(topic).ok()?,
        offset: offset.parse().ok()?,
        frame: frame.into(),
    }))
}

/// The JSON of an alert as the library queues and answers it, `"<id> <duration_ms> <times sent>
/// <trail> <json>"`: Redis hands the entry over whole, and the node skips the id, the two numbers
/// and the trail (absent from an entry of layout 3; the JSON always starts with `{`).
pub(super) fn alert_json(entry: &str) -> Option<&str> {
    entry_parts(entry).map(|(_, json)| json)
}

/// A flight's alert and its duration, from the queue entry an answer or a notice gives with it;
/// none for an empty or unreadable one. Copied once, from the reply into the snapshot: the alert
/// is the one large part.
fn given_alert(entry: &str) -> (Option<Arc<str>>, Option<Duration>) {
    match entry_parts(entry) {
        Some((duration, json)) => (Some(json.into()), Some(duration)),
        None => (None, None),
    }
}

/// The alert's duration and its JSON, from its queue entry (see [`alert_json`]).
pub(super) fn entry_parts(entry: &str) -> Option<(Duration, &str)> {
    let mut parts = entry.splitn(4, ' ');
    let (id, duration, sent) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if id.is_empty() || !numeric(duration) || !numeric(sent) {
        return None;
    }
    let rest = parts.next()?;
    let json = match rest.starts_with('{') {
        true => rest,
        false => rest.split_once(' ')?.1,
    };
    let duration = Duration::from_millis(duration.parse().ok()?);
    Some((duration, json)).filter(|(_, json)| !json.is_empty())
}

/// An answer's kind (its first element), without taking the answer apart.
pub(super) fn kind_of(v: &Value) -> Option<&str> {
    match v {
        Value::Array(items) => items.first().and_then(text),
        _ => None,
    }
}

/// An answer's kind (its first element) and the rest of it.
pub(super) fn tagged(v: Value) -> Result<(String, std::vec::IntoIter<Value>), StoreError> {
    let Value::Array(items) = v else {
        return Err(protocol("answer", &v));
    };
    let mut items = items.into_iter();
    let kind = items.next().as_ref().and_then(text).map(str::to_owned);
    match kind {
        Some(kind) => Ok((kind, items)),
        None => Err(StoreError::Protocol("an answer without its kind".into())),
    }
}

/// A snapshot as the library answers it; `now` is the time the call passed, from which the
/// time left to the alert's deadline is counted.
pub(super) fn parse_snapshot(v: Value, now: u64) -> Result<Snapshot, StoreError> {
    let (kind, mut items) = tagged(v)?;
    if kind != "snapshot" {
        return Err(StoreError::Protocol(format!(
            "expected a snapshot, got {kind}"
        )));
    }
    // Fields a newer library may add after these are left alone.
    let mut next = || {
        items
            .next()
            .ok_or_else(|| StoreError::Protocol("a snapshot cut short".into()))
    };
    let (seq, id, attempt, started, deadline, json, events) = (
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
    );
    // Only when the call skipped an alert (or false before a time to wake at).
    let skipped = items.next().as_ref().and_then(text).map(Into::into);
    // Only while a held alert will approve itself (or nil before the docks' mark).
    let wake = match items.next() {
        None | Some(Value::Nil) => None,
        Some(v) => Some(Duration::from_millis(int(&v)?)),
    };
    // Only while some node has a dock.
    let docks = items.next().is_some_and(|v| v == Value::Int(1));
    let flight = match text(&id) {
        None => None,
        Some(id) => {
            let (alert, duration) = text(&json).map_or((None, None), given_alert);
            Some(Flight {
                id: id.into(),
                attempt: int(&attempt)? as u32,
                started: int(&started)? == 1,
                remaining: Duration::from_millis(int(&deadline)?.saturating_sub(now)),
                alert,
                duration,
            })
        }
    };
    Ok(Snapshot {
        seq: int(&seq)?,
        flight,
        events: text(&events)
            .map(|e| e.split(' ').filter_map(Event::parse).collect())
            .unwrap_or_default(),
        skipped,
        wake,
        docks,
    })
}

pub(super) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A number, as an integer reply or as the digits the library passes on as Redis gave them
/// (converting them in Lua would cost Redis more than reading them here).
pub(super) fn int(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| protocol("integer", v)),
        _ => text(v)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol("integer", v)),
    }
}

pub(super) fn protocol(what: &str, v: &Value) -> StoreError {
    StoreError::Protocol(format!("{what}: unexpected reply {v:?}"))
}

/// One version of a receiver's designs as the designs list keeps it: `<version> <at> <json>`.
pub(super) fn read_versioned(entry: &str) -> Option<crate::store::Versioned> {
    let (version, rest) = entry.split_once(' ')?;
    let (at, json) = rest.split_once(' ')?;
    Some(crate::store::Versioned {
        version: version.parse().ok()?,
        at_ms: at.parse().ok()?,
        json: json.into(),
    })
}

/// How soon a published alert can show, as the library answers it: the milliseconds, or why it
/// cannot say (`paused`, `no_audience`).
pub(super) fn parse_eta(v: Option<Value>) -> Result<crate::store::machine::Eta, StoreError> {
    use crate::store::machine::Eta;
    Ok(match v {
        None => {
            return Err(StoreError::Protocol(
                "an accepted publish without its eta".into(),
            ))
        }
        Some(v) => match text(&v) {
            Some("paused") => Eta::Paused,
            Some("no_audience") => Eta::NoAudience,
            _ => Eta::In(int(&v)?),
        },
    })
}
