//! The embedded store: the rules of `store/mod.rs` over a map in this process's memory, for a
//! single node with no Redis. Queued alerts do not survive a restart.
//!
//! One `std::sync::Mutex` guards every receiver: each transition is a few map operations and
//! never awaits, so a plain mutex is both correct (a transition is atomic) and cheaper than an
//! async one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    Event, Flight, Publish, Rules, Snapshot, Status, Store, StoreError, WidgetChange,
    IDEMPOTENCY_TTL,
};
use crate::alert::{AlertRecord, ReceiverId};

pub struct MemoryStore {
    rules: Rules,
    receivers: Mutex<Receivers>,
}

#[derive(Default)]
struct Receivers {
    map: HashMap<ReceiverId, Receiver>,
    /// The highest `seq` of any receiver forgotten so far. A receiver made again starts from
    /// here, so its `seq` never goes back to a value a hub has already seen.
    seq_floor: u64,
}

#[derive(Default)]
struct Receiver {
    seq: u64,
    queue: VecDeque<Queued>,
    flight: Option<InFlight>,
    widgets: u32,
    /// What the transition under way did; taken by its snapshot.
    events: Vec<Event>,
    /// idempotency key -> (alert id, position, forget after)
    idempotency: HashMap<String, (String, u64, Instant)>,
    /// The ids of the alerts queued and in flight, so the same id is never queued twice.
    ids: HashSet<Arc<str>>,
}

struct Queued {
    alert: Stored,
    /// How many times it was sent before going back to the queue.
    sent: u32,
}

#[derive(Clone)]
struct Stored {
    id: Arc<str>,
    json: Arc<str>,
    duration_ms: u32,
}

struct InFlight {
    alert: Stored,
    attempt: u32,
    started: bool,
    deadline: Instant,
}

impl MemoryStore {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            receivers: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Receivers> {
        // A panic while holding the lock cannot leave a receiver half-changed in a way the
        // rules can't read, so a poisoned lock is still usable.
        self.receivers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one transition on a receiver, then forgets the receiver if nothing is left of it.
    fn with<T>(&self, receiver: &ReceiverId, f: impl FnOnce(&mut Receiver, &Rules) -> T) -> T {
        let mut guard = self.lock();
        let Receivers { map, seq_floor } = &mut *guard;
        let r = map.entry(receiver.clone()).or_insert_with(|| Receiver {
            seq: *seq_floor,
            ..Receiver::default()
        });
        r.events.clear();
        let out = f(r, &self.rules);
        if r.queue.is_empty() && r.flight.is_none() && r.widgets == 0 && r.idempotency.is_empty() {
            *seq_floor = (*seq_floor).max(r.seq);
            map.remove(receiver);
        }
        out
    }
}

impl Receiver {
    /// Free to busy: the one place an alert goes out.
    fn dispatch(&mut self, rules: &Rules, now: Instant) -> bool {
        if self.flight.is_some() || self.widgets == 0 {
            return false;
        }
        let Some(next) = self.queue.pop_front() else {
            return false;
        };
        self.flight = Some(InFlight {
            alert: next.alert,
            attempt: next.sent + 1,
            started: false,
            deadline: now + rules.start_timeout,
        });
        self.seq += 1;
        self.events.push(Event::Sent);
        true
    }

    /// Busy to free: the one place an alert stops being in flight for good, as `Done` or
    /// `Expired`.
    fn complete(&mut self, how: Event) {
        if let Some(f) = self.flight.take() {
            self.ids.remove(&f.alert.id);
        }
        self.seq += 1;
        self.events.push(how);
    }

    /// Back to the head of the queue, when no widget is left to show it.
    fn requeue(&mut self) {
        if let Some(f) = self.flight.take() {
            self.queue.push_front(Queued {
                alert: f.alert,
                sent: f.attempt,
            });
            self.seq += 1;
            self.events.push(Event::Requeued);
        }
    }

    fn snapshot(&mut self, now: Instant, with_alert: bool) -> Snapshot {
        Snapshot {
            events: std::mem::take(&mut self.events),
            seq: self.seq,
            flight: self.flight.as_ref().map(|f| Flight {
                id: f.alert.id.clone(),
                attempt: f.attempt,
                started: f.started,
                remaining: f.deadline.saturating_duration_since(now),
                alert: with_alert.then(|| f.alert.json.clone()),
            }),
        }
    }

    fn is_flight(&self, id: &str) -> bool {
        self.flight.as_ref().is_some_and(|f| &*f.alert.id == id)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn publish(
        &self,
        alert: &AlertRecord,
        idempotency_key: Option<&str>,
    ) -> Result<Publish, StoreError> {
        let now = Instant::now();
        Ok(self.with(&alert.receiver, |r, rules| {
            if let Some(key) = idempotency_key {
                r.idempotency.retain(|_, (_, _, until)| *until > now);
                if let Some((id, position, _)) = r.idempotency.get(key) {
                    return Publish::Duplicate {
                        id: id.clone(),
                        position: *position,
                    };
                }
            }
            if r.ids.contains(alert.id.as_str()) {
                // Queued or in flight already: answered as its first publish was.
                let position = match r.queue.iter().position(|q| *q.alert.id == *alert.id) {
                    Some(ahead) => ahead as u64 + u64::from(r.flight.is_some()),
                    None => 0,
                };
                return Publish::Accepted {
                    position,
                    snapshot: r.snapshot(now, true),
                };
            }
            if r.queue.len() as u64 >= rules.max_queue {
                return Publish::QueueFull;
            }
            let position = r.queue.len() as u64 + u64::from(r.flight.is_some());
            let id: Arc<str> = alert.id.as_str().into();
            r.ids.insert(id.clone());
            r.queue.push_back(Queued {
                alert: Stored {
                    id,
                    json: alert.json.clone(),
                    duration_ms: alert.duration_ms,
                },
                sent: 0,
            });
            if let Some(key) = idempotency_key {
                r.idempotency.insert(
                    key.to_owned(),
                    (alert.id.clone(), position, now + IDEMPOTENCY_TTL),
                );
            }
            let changed = r.dispatch(rules, now);
            Publish::Accepted {
                position,
                snapshot: r.snapshot(now, changed),
            }
        }))
    }

    async fn widgets(
        &self,
        receiver: &ReceiverId,
        change: WidgetChange,
    ) -> Result<Snapshot, StoreError> {
        let now = Instant::now();
        self.with(receiver, |r, rules| {
            if change == WidgetChange::Joined && r.widgets >= rules.max_widgets {
                return Err(StoreError::TooManyWidgets(rules.max_widgets));
            }
            r.widgets = match change {
                WidgetChange::Joined => r.widgets + 1,
                WidgetChange::Left | WidgetChange::Withdrawn => r.widgets.saturating_sub(1),
                WidgetChange::Refresh(n) => n,
            };
            match change {
                // The alert stays in flight for the widget to get again where it reconnects.
                WidgetChange::Withdrawn => {}
                _ if r.widgets == 0 => r.requeue(),
                _ => {
                    r.dispatch(rules, now);
                }
            }
            Ok(r.snapshot(now, true))
        })
    }

    async fn started(&self, receiver: &ReceiverId, id: &str) -> Result<Snapshot, StoreError> {
        let now = Instant::now();
        Ok(self.with(receiver, |r, rules| {
            if let Some(f) = r
                .flight
                .as_mut()
                .filter(|f| &*f.alert.id == id && !f.started)
            {
                f.started = true;
                f.deadline = now
                    + std::time::Duration::from_millis(u64::from(f.alert.duration_ms))
                    + rules.ack_grace;
            }
            r.snapshot(now, false)
        }))
    }

    async fn done(&self, receiver: &ReceiverId, id: &str) -> Result<Snapshot, StoreError> {
        let now = Instant::now();
        Ok(self.with(receiver, |r, rules| {
            let changed = r.is_flight(id);
            if changed {
                r.complete(Event::Done);
                r.dispatch(rules, now);
            }
            r.snapshot(now, changed)
        }))
    }

    async fn check(&self, receiver: &ReceiverId, id: &str) -> Result<Snapshot, StoreError> {
        let now = Instant::now();
        Ok(self.with(receiver, |r, rules| {
            let due = r
                .flight
                .as_ref()
                .filter(|f| &*f.alert.id == id && f.deadline <= now)
                .map(|f| f.started);
            match due {
                None => r.snapshot(now, false),
                Some(false) if r.widgets == 0 => {
                    r.requeue();
                    r.snapshot(now, true)
                }
                Some(false) => {
                    if let Some(f) = r.flight.as_mut() {
                        f.attempt += 1;
                        f.deadline = now + rules.start_timeout;
                    }
                    r.seq += 1;
                    r.events.push(Event::Resent);
                    r.snapshot(now, true)
                }
                Some(true) => {
                    r.complete(Event::Expired);
                    r.dispatch(rules, now);
                    r.snapshot(now, true)
                }
            }
        }))
    }

    async fn status(&self, receiver: &ReceiverId) -> Result<Status, StoreError> {
        Ok(match self.lock().map.get(receiver) {
            None => Status {
                queued: 0,
                in_flight: None,
                widgets: 0,
            },
            Some(r) => Status {
                queued: r.queue.len() as u64,
                in_flight: r.flight.as_ref().map(|f| f.alert.json.clone()),
                widgets: u64::from(r.widgets),
            },
        })
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
