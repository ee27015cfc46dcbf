//! The embedded store: a map of receivers in this process's memory, each changed only by the
//! pure state machine ([`super::machine`]), for a single node with no Redis. Queued alerts do
//! not survive a restart.
//!
//! One `std::sync::Mutex` guards every receiver: each transition is one [`machine::apply`] and
//! never awaits, so a plain mutex is both correct (a transition is atomic) and cheaper than an
//! async one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::time::Instant;

use super::machine::{self, Command, Millis, Outcome, Receiver};
use super::{Answered, Call, CallObserver, Rules, Status, Store, StoreError, Unobserved};
use crate::alert::ReceiverId;

/// The one node the embedded store serves, as its widget reports name it.
const NODE: &str = "embedded";

pub struct MemoryStore {
    rules: Rules,
    observer: Arc<dyn CallObserver>,
    /// The store's clock starts here.
    epoch: Instant,
    receivers: Mutex<Receivers>,
}

#[derive(Default)]
struct Receivers {
    map: HashMap<ReceiverId, Receiver>,
    /// The highest `seq` of any receiver forgotten so far. A receiver made again starts from
    /// here, so its `seq` never goes back to a value a hub has already seen.
    seq_floor: u64,
}

impl MemoryStore {
    pub fn new(rules: Rules) -> Self {
        Self::observed(rules, Arc::new(Unobserved))
    }

    /// A store that reports how long each call took, as the Redis store does.
    pub fn observed(rules: Rules, observer: Arc<dyn CallObserver>) -> Self {
        Self {
            rules,
            observer,
            epoch: Instant::now(),
            receivers: Mutex::default(),
        }
    }

    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    fn lock(&self) -> MutexGuard<'_, Receivers> {
        // A panic while holding the lock cannot leave a receiver half-changed in a way the
        // rules can't read, so a poisoned lock is still usable.
        self.receivers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one command to a receiver, then forgets the receiver if nothing is left of it.
    fn transition(&self, receiver: &ReceiverId, command: Command<'_>) -> Outcome {
        let now = self.now();
        let mut guard = self.lock();
        let Receivers { map, seq_floor } = &mut *guard;
        let r = map.entry(receiver.clone()).or_insert_with(|| Receiver {
            seq: *seq_floor,
            ..Receiver::default()
        });
        let outcome = machine::apply(r, command, now, &self.rules);
        if r.is_idle(now) {
            *seq_floor = (*seq_floor).max(r.seq);
            map.remove(receiver);
        }
        outcome
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn apply(
        &self,
        receiver: &ReceiverId,
        command: Command<'_>,
    ) -> Result<Answered, StoreError> {
        let (call, started) = (command.call(), std::time::Instant::now());
        let outcome = self.transition(receiver, command);
        self.observer.observe(call, started.elapsed(), false);
        Ok(outcome.answered())
    }

    fn node(&self) -> &str {
        NODE
    }

    async fn status(&self, receiver: &ReceiverId) -> Result<Status, StoreError> {
        let (now, started) = (self.now(), std::time::Instant::now());
        let status = match self.lock().map.get(receiver) {
            None => Status {
                queued: 0,
                in_flight: None,
                widgets: 0,
            },
            Some(r) => Status {
                queued: r.queued(),
                in_flight: r.flight.as_ref().map(|f| f.alert.json.clone()),
                widgets: u64::from(r.live_widgets(now)),
            },
        };
        self.observer
            .observe(Call::Status, started.elapsed(), false);
        Ok(status)
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
