//! The rules of a receiver, once: a pure state machine with no I/O and no clock.
//!
//! [`apply`] takes a receiver's state, one [`Command`], the time (`now`, milliseconds on the
//! store's clock) and the [`Rules`], changes the state and answers an [`Outcome`]: what the
//! command came to, the receiver's [`Snapshot`] after it, what happened to which alert and when
//! (a trail for history), and when the receiver next needs waking. It never sleeps and never sets
//! a timer; a store keeps the state, and the node's hub calls [`Command::Check`] when the wake-up
//! time comes.
//!
//! The embedded store is a map of receivers and this function. The Redis store runs the same
//! rules in `redis/receiver.lua`, which `tests/api/differential.rs` holds to this machine with
//! random command sequences; `tests/api/conformance.rs` holds both stores to the rules.
//!
//! # How the rules read
//!
//! - **Dispatch** (free to busy) is `dispatch`, the only place an alert goes out,
//!   and only while free and some widget is live and on air on some node. A widget off air (in
//!   OBS, on a scene that is not live) still counts as live: it keeps the alert in flight and
//!   shows it, silently; but an audience of such widgets alone sends nothing new, so alerts wait
//!   rather than play to nobody. A node reports its widgets off air only for receivers that hold
//!   alerts while inactive (`hold_while_inactive`, on by default).
//! - **Completion** (busy to free) is `complete`, for `done` and `expired`.
//! - **Lanes.** A receiver's waiting alerts are in two lanes: the priority lane (high-priority
//!   alerts, and an alert put back at the head) goes out before the normal one; each is FIFO.
//! - **Requeue** puts the alert in flight back at the head when no widget is left to show it:
//!   the head of the priority lane, since it went out ahead of everything still waiting.
//! - **Pause** stops dispatch, and only dispatch: the alert in flight still finishes, and
//!   **resume** dispatches at once. **Skip** completes the alert in flight as skipped and sends
//!   the next. **Clear** removes waiting alerts from the heads of the lanes, never the one in
//!   flight, a chunk per command.
//! - **Replay** puts an alert at the very head of the priority lane. **Held** alerts wait out of
//!   both lanes until **approved** (to the back of their lane) or **denied**; one whose time to
//!   approve itself has come is approved before anything else a command does (but `started` and
//!   a record of a filtered alert, which leave the lanes alone).
//! - **History.** An alert that leaves for good (done, expired, skipped, cleared, filtered,
//!   denied) is handed out in [`Outcome::recorded`] with its trail; the machine keeps none.
//! - Every change of the alert in flight bumps `seq`; a receiver seen for the first time starts
//!   it from the clock, so it still moves past anything a node saw before its state was lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::history::{Mark, Record, Trail};
use super::{Answered, Call, Event, Flight, Rules, Snapshot, WidgetChange};
use crate::alert::AlertRecord;

/// Milliseconds on the store's clock.
pub type Millis = u64;

/// An alert as the machine keeps it: its id, its JSON as published, and how long it shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub id: Arc<str>,
    pub json: Arc<str>,
    pub duration_ms: u32,
}

impl Stored {
    /// An alert as published.
    pub fn of(alert: &AlertRecord) -> Self {
        Self {
            id: alert.id.as_str().into(),
            json: alert.json.clone(),
            duration_ms: alert.duration_ms,
        }
    }
}

/// A waiting alert, with how many times it was sent before going back to the queue, and its
/// trail so far.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub alert: Stored,
    pub sent: u32,
    pub trail: Trail,
}

/// An alert held for the streamer's approval, and where it goes once approved.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub queued: Queued,
    pub lane: Lane,
    /// Approved by itself from then on, if ever.
    pub approve_at: Option<Millis>,
}

/// The alert in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    pub alert: Stored,
    pub attempt: u32,
    pub started: bool,
    /// The start timeout while only sent; its duration plus the ack grace once started.
    pub deadline: Millis,
    pub trail: Trail,
}

/// One node's report of its widgets for a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    pub widgets: u32,
    /// Of them, the widgets off air: they hold the alert in flight but release none.
    pub inactive: u32,
    /// Previews the node has open besides: no audience, so the rules ignore them.
    pub previews: u32,
    /// The report counts until then unless refreshed.
    pub live_until: Millis,
}

/// What a publish with an idempotency key is remembered as.
#[derive(Clone, Debug, PartialEq)]
pub struct Remembered {
    pub id: String,
    pub position: u64,
    pub until: Millis,
}

/// Everything the rules know of one receiver.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Receiver {
    pub seq: u64,
    /// The priority lane, dispatched before `queue`: high-priority alerts, and alerts put back
    /// at the head.
    pub priority: VecDeque<Queued>,
    /// The normal lane.
    pub queue: VecDeque<Queued>,
    /// Alerts waiting for the streamer's approval, oldest first; never sent from here.
    pub held: VecDeque<Held>,
    pub flight: Option<InFlight>,
    /// node id -> its report.
    pub presence: HashMap<Arc<str>, Presence>,
    /// idempotency key -> the first publish with it.
    pub idempotency: HashMap<String, Remembered>,
    /// The ids queued and in flight, so the same id is never queued twice (Redis: the alerts
    /// hash).
    pub ids: HashSet<Arc<str>>,
    /// The streamer paused the receiver: nothing new goes out until it is resumed.
    pub paused: bool,
    /// What the commands applied so far changed of the queue and the idempotency keys, in
    /// order, for a store that keeps them on disk row by row: it takes them after each command
    /// (`std::mem::take`) and writes just those. `seq` and the alert in flight it compares
    /// instead. A store that keeps no copy of its own clears them.
    pub changes: Vec<Change>,
}

/// One of a receiver's two queues of waiting alerts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lane {
    /// Before every normal alert, one at a time and FIFO among themselves.
    Priority,
    #[default]
    Normal,
}

/// A change [`apply`] made to a receiver's queue or idempotency keys (see
/// [`Receiver::changes`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// An alert joined the back of a lane.
    PushedBack(Lane),
    /// An alert went back to the head of a lane.
    PushedFront(Lane),
    /// The head of a lane left it.
    PoppedFront(Lane),
    /// A publish's idempotency key was remembered, under this key.
    Remembered(String),
    /// An alert joined the back of the held ones.
    Held,
    /// This held alert left them (approved or denied).
    Unheld(Arc<str>),
}

/// Every transition of a receiver.
#[derive(Clone, Debug)]
pub enum Command<'a> {
    /// Queue an alert in a lane, and send it if the receiver is free.
    Publish {
        alert: Stored,
        idempotency_key: Option<&'a str>,
        lane: Lane,
        /// Held for approval instead of queued.
        hold: Option<Hold>,
    },
    /// Queue an alert from history again, at the very head (of the priority lane): the
    /// streamer asked for it now.
    Replay { alert: Stored },
    /// Moderation kept an alert off screen: it is only recorded in history.
    Filtered { alert: Stored },
    /// A node's widgets for the receiver changed; `inactive` of them (after the change) are off
    /// air. `previews`: the node also has this many previews open, which are no audience, so the
    /// rules ignore them (they are counted, and a store of many nodes keeps the node's report so
    /// as to tell it of changes).
    Widgets {
        node: &'a str,
        change: WidgetChange,
        inactive: u32,
        previews: u32,
    },
    /// A widget began to show alert `id`.
    Started { id: &'a str },
    /// A widget finished alert `id`; `unspoken`, if it was shown without its speech, says why
    /// ([`Mark::SpeechFailed`] or [`Mark::SpeechLate`]), for its trail.
    Done { id: &'a str, unspoken: Option<Mark> },
    /// The deadline of alert `id` may have passed.
    Check { id: &'a str },
    /// `node` was found dead: its widgets are gone.
    Sweep { node: &'a str },
    /// The streamer paused the receiver, or resumed it.
    Pause { paused: bool },
    /// The streamer skipped the alert in flight (only if it is `id`, when given).
    Skip { id: Option<&'a str> },
    /// One chunk of clearing the waiting alerts: at most `most` of them, from the head of the
    /// priority lane, then of the normal one, and of each at most its count in `left` (`None`:
    /// all it holds now). A clear of many alerts is a run of these, each passing the `left` the
    /// last answered, so alerts published while it runs are not cleared.
    Clear { left: Option<Left>, most: u32 },
    /// The streamer approved held alert `id`: it joins its lane.
    Approve { id: &'a str },
    /// The streamer denied held alert `id`: it is recorded, never shown.
    Deny { id: &'a str },
    /// Held alerts may be due for approval by themselves.
    Wake,
}

/// How a publish is held for approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Approved by itself this long after it was published, if ever.
    pub approve_after: Option<Millis>,
}

/// Where a publish puts its alert.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// At the back of a lane.
    Back(Lane),
    /// At the head of the priority lane.
    Head,
    /// Held for approval, to join the back of the lane once approved.
    Held(Lane, Hold),
}

/// How many alerts of each lane a clear has yet to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Left {
    pub priority: u64,
    pub normal: u64,
}

impl Command<'_> {
    /// The store call it is measured as.
    pub fn call(&self) -> Call {
        match self {
            Command::Publish { .. } | Command::Replay { .. } => Call::Publish,
            Command::Filtered { .. } => Call::Filtered,
            Command::Widgets { .. } => Call::Widgets,
            Command::Started { .. } => Call::Started,
            Command::Done { .. } => Call::Done,
            Command::Check { .. } => Call::Check,
            Command::Sweep { .. } => Call::Sweep,
            Command::Pause { .. } => Call::Pause,
            Command::Skip { .. } => Call::Skip,
            Command::Clear { .. } => Call::Clear,
            Command::Approve { .. } | Command::Deny { .. } | Command::Wake => Call::Approval,
        }
    }
}

/// What a command came to, besides the snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The state after the command is in the snapshot.
    Changed,
    /// A publish was queued (or its id was queued already); `position` alerts are ahead of it,
    /// and it can show as `eta` says.
    Accepted {
        position: u64,
        eta: Eta,
    },
    /// The idempotency key was seen: the first alert's id and position, nothing queued.
    Duplicate {
        id: String,
        position: u64,
    },
    QueueFull,
    /// A widget joined past the limit; nothing was counted.
    TooManyWidgets(u32),
    /// A chunk of a clear removed these alerts; `left` remain to be cleared.
    Cleared {
        ids: Vec<Arc<str>>,
        left: Left,
    },
    /// A publish was held for approval.
    Held,
    /// An approval or a denial named an alert that is not held (any more).
    NotHeld,
}

/// How soon a waiting alert can show, as the rules see it (the gaps between alerts, which
/// widgets keep, aside: the HTTP layer adds one per alert ahead, `http::alerts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eta {
    /// In about this many ms: what is left of the alert in flight (all of its duration while
    /// it has not started), then the durations of the alerts ahead of it.
    In(Millis),
    /// Not before the streamer resumes the receiver.
    Paused,
    /// Not before some widget is on air to show it.
    NoAudience,
}

/// Where one alert is while its receiver has it (once it left, its history says how it ended).
#[derive(Clone, Debug, PartialEq)]
pub enum Whereabouts {
    /// Waiting in line, `position` alerts ahead of it (the one in flight among them).
    Queued { position: u64, eta: Eta },
    /// Held for the streamer's approval.
    Held,
    /// In flight; showing since `started_at` once a widget started it.
    InFlight { started_at: Option<Millis> },
}

/// Where alert `id` is in receiver `r` at `now`, if `r` still has it. Reads only.
pub fn locate(r: &Receiver, id: &str, now: Millis, rules: &Rules) -> Option<Whereabouts> {
    if let Some(f) = r.flight.as_ref().filter(|f| &*f.alert.id == id) {
        let started_at = f.started.then(|| {
            f.deadline
                .saturating_sub(u64::from(f.alert.duration_ms) + ms(rules.ack_grace))
        });
        return Some(Whereabouts::InFlight { started_at });
    }
    let mut waiting_ms = 0;
    for (ahead, q) in r.waiting().enumerate() {
        if &*q.alert.id == id {
            let position = ahead as u64 + u64::from(r.flight.is_some());
            let eta = r.eta(waiting_ms, now, rules);
            return Some(Whereabouts::Queued { position, eta });
        }
        waiting_ms += u64::from(q.alert.duration_ms);
    }
    r.held
        .iter()
        .any(|h| &*h.queued.alert.id == id)
        .then_some(Whereabouts::Held)
}

/// Something that happened to one alert, for a history trail.
#[derive(Clone, Debug, PartialEq)]
pub struct Happened {
    pub event: Event,
    pub id: Arc<str>,
    pub attempt: u32,
    pub at: Millis,
}

/// The outcome of one command.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub answer: Answer,
    pub snapshot: Snapshot,
    pub trail: Vec<Happened>,
    /// The alerts that left the receiver for good in this command, for its history, in the
    /// order they left. The machine keeps no history: the store keeps these.
    pub recorded: Vec<Record>,
    /// When the receiver next needs a [`Command::Check`]: the deadline of its alert in flight.
    pub wake_at: Option<Millis>,
}

impl Outcome {
    /// What a store answers with: the trail and the wake-up time stay with the caller of the
    /// machine.
    pub fn answered(self) -> Answered {
        Answered {
            answer: self.answer,
            snapshot: Some(self.snapshot),
        }
    }
}

/// Applies one command to a receiver at time `now`.
pub fn apply(r: &mut Receiver, command: Command<'_>, now: Millis, rules: &Rules) -> Outcome {
    let mut step = Step {
        seq_before: r.seq,
        r,
        now,
        rules,
        trail: Vec::new(),
        recorded: Vec::new(),
        quiet: matches!(command, Command::Started { .. }),
    };
    let (answer, with_alert) = step.run(command);
    step.finish(answer, with_alert)
}

/// One command under way.
struct Step<'r> {
    r: &'r mut Receiver,
    now: Millis,
    rules: &'r Rules,
    seq_before: u64,
    trail: Vec<Happened>,
    recorded: Vec<Record>,
    /// The command was `started`.
    quiet: bool,
}

impl Step<'_> {
    /// Runs the command; answers what it came to and whether the snapshot must carry the alert
    /// in flight even if it did not change.
    fn run(&mut self, command: Command<'_>) -> (Answer, bool) {
        let now = self.now;
        // Held alerts whose time came join their lanes before anything else the command does
        // (but for the most frequent command and a record, which leave the lanes alone).
        if !matches!(command, Command::Started { .. } | Command::Filtered { .. }) {
            self.release_due();
        }
        match command {
            Command::Publish {
                alert,
                idempotency_key,
                lane,
                hold: None,
            } => self.publish(alert, idempotency_key, Place::Back(lane)),
            Command::Publish {
                alert,
                idempotency_key,
                lane,
                hold: Some(hold),
            } => self.publish(alert, idempotency_key, Place::Held(lane, hold)),
            Command::Replay { alert } => self.publish(alert, None, Place::Head),
            Command::Approve { id } => match self.unhold(id) {
                Some(held) => {
                    self.approve(held);
                    self.dispatch();
                    (Answer::Changed, false)
                }
                None => (Answer::NotHeld, false),
            },
            Command::Deny { id } => match self.unhold(id) {
                Some(held) => {
                    self.r.ids.remove(&held.queued.alert.id);
                    let trail = held.queued.trail.and(Mark::Denied, now, None);
                    self.record(held.queued.alert, Mark::Denied, trail);
                    (Answer::Changed, false)
                }
                None => (Answer::NotHeld, false),
            },
            Command::Wake => {
                self.dispatch();
                (Answer::Changed, false)
            }
            Command::Filtered { alert } => {
                let trail = Trail::received(now).and(Mark::Filtered, now, None);
                self.record(alert, Mark::Filtered, trail);
                (Answer::Changed, false)
            }
            Command::Widgets {
                node,
                change,
                inactive,
                previews,
            } => self.widgets(node, change, inactive, previews),
            Command::Started { id } => {
                let grace = ms(self.rules.ack_grace);
                if let Some(f) = self.flight_matching(id).filter(|f| !f.started) {
                    f.started = true;
                    f.deadline = now + u64::from(f.alert.duration_ms) + grace;
                    f.trail.push(Mark::Started, now, None);
                }
                (Answer::Changed, false)
            }
            Command::Done { id, unspoken } => {
                if let Some(f) = self.flight_matching(id) {
                    if let Some(why) = unspoken {
                        f.trail.push(why, now, None);
                    }
                    self.complete(Event::Done);
                    self.dispatch();
                }
                (Answer::Changed, false)
            }
            Command::Check { id } => {
                let due = self
                    .flight_matching(id)
                    .filter(|f| f.deadline <= now)
                    .map(|f| f.started);
                match due {
                    Some(true) => {
                        self.complete(Event::Expired);
                        self.dispatch();
                    }
                    Some(false) if self.live() == 0 => self.requeue(),
                    // Sent but never started: the frame may have been lost, so send it again.
                    Some(false) => self.resend(),
                    None => {}
                }
                (Answer::Changed, false)
            }
            Command::Sweep { node } => {
                self.r.presence.remove(node);
                if self.live() == 0 {
                    self.requeue();
                } else {
                    self.dispatch();
                }
                (Answer::Changed, false)
            }
            Command::Pause { paused } => {
                self.r.paused = paused;
                self.dispatch();
                (Answer::Changed, true)
            }
            Command::Clear { left, most } => self.clear(left, most),
            Command::Skip { id } => {
                let matches = self
                    .r
                    .flight
                    .as_ref()
                    .is_some_and(|f| id.is_none_or(|id| &*f.alert.id == id));
                if matches {
                    self.complete(Event::Skipped);
                    self.dispatch();
                }
                (Answer::Changed, true)
            }
        }
    }

    fn publish(
        &mut self,
        alert: Stored,
        idempotency_key: Option<&str>,
        place: Place,
    ) -> (Answer, bool) {
        let now = self.now;
        if let Some(key) = idempotency_key {
            self.r.idempotency.retain(|_, seen| seen.until > now);
            if let Some(seen) = self.r.idempotency.get(key) {
                let (id, position) = (seen.id.clone(), seen.position);
                return (Answer::Duplicate { id, position }, false);
            }
        }
        if self.r.held.iter().any(|h| h.queued.alert.id == alert.id) {
            return (Answer::Held, true);
        }
        if self.r.ids.contains(&alert.id) {
            // Queued or in flight already: a retry of a publish whose answer was lost. Answered
            // as that publish was, queueing nothing.
            let position = self.position_of(&alert.id).unwrap_or(0);
            let eta = match position {
                0 if self
                    .r
                    .flight
                    .as_ref()
                    .is_some_and(|f| f.alert.id == alert.id) =>
                {
                    Eta::In(0)
                }
                _ => self.eta(self.waiting_ms_ahead_of(&alert.id)),
            };
            return (Answer::Accepted { position, eta }, true);
        }
        if self.r.queued() + self.r.held.len() as u64 >= self.rules.max_queue {
            return (Answer::QueueFull, false);
        }
        let ahead = match place {
            Place::Head | Place::Held(..) => 0,
            Place::Back(Lane::Priority) => self.r.priority.len(),
            Place::Back(Lane::Normal) => self.r.priority.len() + self.r.queue.len(),
        };
        let position = match place {
            Place::Held(..) => 0,
            _ => ahead as u64 + u64::from(self.r.flight.is_some()),
        };
        let eta = self.eta(
            self.r
                .waiting()
                .take(ahead)
                .map(|q| q.alert.duration_ms)
                .map(u64::from)
                .sum(),
        );
        if let Some(key) = idempotency_key {
            let seen = Remembered {
                id: alert.id.to_string(),
                position,
                until: now + ms(super::IDEMPOTENCY_TTL),
            };
            self.r.idempotency.insert(key.to_owned(), seen);
            self.r.changes.push(Change::Remembered(key.to_owned()));
        }
        self.r.ids.insert(alert.id.clone());
        let queued = Queued {
            alert,
            sent: 0,
            trail: Trail::received(now),
        };
        if let Place::Held(lane, hold) = place {
            let trail = queued.trail.and(Mark::Held, now, None);
            self.r.held.push_back(Held {
                queued: Queued { trail, ..queued },
                lane,
                approve_at: hold.approve_after.map(|after| now + after),
            });
            self.r.changes.push(Change::Held);
            return (Answer::Held, false);
        }
        match place {
            Place::Back(lane) => {
                self.r.lane(lane).push_back(queued);
                self.r.changes.push(Change::PushedBack(lane));
            }
            Place::Head => {
                self.r.priority.push_front(queued);
                self.r.changes.push(Change::PushedFront(Lane::Priority));
            }
            Place::Held(..) => unreachable!("held above"),
        }
        self.dispatch();
        (Answer::Accepted { position, eta }, false)
    }

    fn clear(&mut self, left: Option<Left>, most: u32) -> (Answer, bool) {
        let mut left = left.unwrap_or(Left {
            priority: self.r.priority.len() as u64,
            normal: self.r.queue.len() as u64,
        });
        let mut ids = Vec::new();
        for lane in [Lane::Priority, Lane::Normal] {
            let count = match lane {
                Lane::Priority => &mut left.priority,
                Lane::Normal => &mut left.normal,
            };
            while *count > 0 && ids.len() < most as usize {
                let Some(gone) = self.r.lane(lane).pop_front() else {
                    // Fewer than counted: they went out meanwhile.
                    *count = 0;
                    break;
                };
                *count -= 1;
                self.r.changes.push(Change::PoppedFront(lane));
                self.r.ids.remove(&gone.alert.id);
                ids.push(gone.alert.id.clone());
                let trail = gone.trail.and(Mark::Cleared, self.now, None);
                self.record(gone.alert, Mark::Cleared, trail);
            }
        }
        (Answer::Cleared { ids, left }, false)
    }

    fn widgets(
        &mut self,
        node: &str,
        change: WidgetChange,
        inactive: u32,
        previews: u32,
    ) -> (Answer, bool) {
        let now = self.now;
        if change == WidgetChange::Joined && self.live() >= self.rules.max_widgets {
            return (Answer::TooManyWidgets(self.rules.max_widgets), false);
        }
        // A node that stopped refreshing its report is gone; forget it.
        self.r
            .presence
            .retain(|n, p| &**n == node || p.live_until > now);
        let mine = self.r.presence.get(node).map_or(0, |p| p.widgets);
        let mine = match change {
            WidgetChange::Joined => mine + 1,
            WidgetChange::Left | WidgetChange::Withdrawn => mine.saturating_sub(1),
            WidgetChange::Refresh(n) => n,
        };
        if mine > 0 || previews > 0 {
            let report = Presence {
                widgets: mine,
                inactive: inactive.min(mine),
                previews,
                live_until: now + ms(super::PRESENCE_TTL),
            };
            match self.r.presence.get_mut(node) {
                Some(p) => *p = report,
                None => {
                    self.r.presence.insert(node.into(), report);
                }
            }
        } else {
            self.r.presence.remove(node);
        }
        match change {
            // A withdrawn widget (its node is stopping) will reconnect elsewhere and be given
            // the alert in flight again, so it stays in flight.
            WidgetChange::Withdrawn => {}
            _ if self.live() == 0 => self.requeue(),
            _ => self.dispatch(),
        }
        (Answer::Changed, true)
    }

    /// Live widgets over all nodes.
    fn live(&self) -> u32 {
        self.r.live_widgets(self.now)
    }

    /// Whether some live widget is on air: someone will see what goes out.
    fn on_air(&self) -> bool {
        self.r.widgets_on_air(self.now) > 0
    }

    fn flight_matching(&mut self, id: &str) -> Option<&mut InFlight> {
        self.r.flight.as_mut().filter(|f| &*f.alert.id == id)
    }

    /// How many alerts are ahead of alert `id`, if it is queued or in flight.
    fn position_of(&self, id: &str) -> Option<u64> {
        if self.r.flight.as_ref().is_some_and(|f| &*f.alert.id == id) {
            return Some(0);
        }
        let ahead = self.r.waiting().position(|q| &*q.alert.id == id)?;
        Some(ahead as u64 + u64::from(self.r.flight.is_some()))
    }

    /// The durations of the waiting alerts ahead of alert `id` (all of them if it is not
    /// waiting).
    fn waiting_ms_ahead_of(&self, id: &str) -> Millis {
        self.r
            .waiting()
            .take_while(|q| &*q.alert.id != id)
            .map(|q| u64::from(q.alert.duration_ms))
            .sum()
    }

    fn eta(&self, waiting_ms: Millis) -> Eta {
        self.r.eta(waiting_ms, self.now, self.rules)
    }

    fn bump(&mut self) {
        if self.r.seq == 0 {
            // A new receiver, or one whose state was lost: count on from the clock.
            self.r.seq = self.now * 1000;
        }
        self.r.seq += 1;
    }

    /// Takes held alert `id` out of the held ones.
    fn unhold(&mut self, id: &str) -> Option<Held> {
        let at = self.r.held.iter().position(|h| &*h.queued.alert.id == id)?;
        let held = self.r.held.remove(at)?;
        self.r
            .changes
            .push(Change::Unheld(held.queued.alert.id.clone()));
        Some(held)
    }

    /// A held alert joins the back of its lane.
    fn approve(&mut self, held: Held) {
        let Held {
            mut queued, lane, ..
        } = held;
        queued.trail.push(Mark::Approved, self.now, None);
        self.r.lane(lane).push_back(queued);
        self.r.changes.push(Change::PushedBack(lane));
    }

    /// Approves, oldest first, every held alert whose time to be approved by itself has come.
    fn release_due(&mut self) {
        let now = self.now;
        while let Some(at) = self
            .r
            .held
            .iter()
            .position(|h| h.approve_at.is_some_and(|t| t <= now))
        {
            let id = self.r.held[at].queued.alert.id.clone();
            if let Some(held) = self.unhold(&id) {
                self.approve(held);
            }
        }
    }

    /// An alert left the receiver for good: its history entry.
    fn record(&mut self, alert: Stored, status: Mark, trail: Trail) {
        self.recorded.push(Record {
            id: alert.id,
            status,
            trail,
            json: alert.json,
        });
    }

    fn happened(&mut self, event: Event, id: Arc<str>, attempt: u32) {
        let at = self.now;
        self.trail.push(Happened {
            event,
            id,
            attempt,
            at,
        });
    }

    /// Free to busy: the one place an alert goes out. Only while free, not paused, and someone
    /// can see it.
    fn dispatch(&mut self) {
        if self.r.flight.is_some() || self.r.paused || !self.on_air() {
            return;
        }
        let lane = if self.r.priority.is_empty() {
            Lane::Normal
        } else {
            Lane::Priority
        };
        let Some(next) = self.r.lane(lane).pop_front() else {
            return;
        };
        self.r.changes.push(Change::PoppedFront(lane));
        let (id, attempt) = (next.alert.id.clone(), next.sent + 1);
        self.r.flight = Some(InFlight {
            alert: next.alert,
            attempt,
            started: false,
            deadline: self.now + ms(self.rules.start_timeout),
            trail: next.trail.and(Mark::Sent, self.now, Some(attempt)),
        });
        self.bump();
        self.happened(Event::Sent, id, attempt);
    }

    /// Busy to free: the one place an alert stops being in flight for good.
    fn complete(&mut self, how: Event) {
        if let Some(f) = self.r.flight.take() {
            self.r.ids.remove(&f.alert.id);
            self.bump();
            self.happened(how, f.alert.id.clone(), f.attempt);
            let status = match how {
                Event::Expired => Mark::Expired,
                Event::Skipped => Mark::Skipped,
                _ => Mark::Done,
            };
            let trail = f.trail.and(status, self.now, None);
            self.record(f.alert, status, trail);
        }
    }

    /// Back to the head of the queue when no widget is left to show it, remembering how many
    /// times it was sent so the next send counts on. The head of the priority lane: it went
    /// out ahead of everything still waiting, and goes out first again.
    fn requeue(&mut self) {
        if let Some(f) = self.r.flight.take() {
            let (id, attempt) = (f.alert.id.clone(), f.attempt);
            self.r.priority.push_front(Queued {
                alert: f.alert,
                sent: f.attempt,
                trail: f.trail.and(Mark::Requeued, self.now, Some(attempt)),
            });
            self.r.changes.push(Change::PushedFront(Lane::Priority));
            self.bump();
            self.happened(Event::Requeued, id, attempt);
        }
    }

    fn resend(&mut self) {
        let deadline = self.now + ms(self.rules.start_timeout);
        let Some(f) = self.r.flight.as_mut() else {
            return;
        };
        f.attempt += 1;
        f.deadline = deadline;
        f.trail.push(Mark::Sent, self.now, Some(f.attempt));
        let (id, attempt) = (f.alert.id.clone(), f.attempt);
        self.bump();
        self.happened(Event::Resent, id, attempt);
    }

    /// The outcome: the snapshot carries the alert in flight when `seq` moved (it is news) or
    /// when the command asks for it.
    fn finish(self, answer: Answer, with_alert: bool) -> Outcome {
        let now = self.now;
        let changed = self.r.seq != self.seq_before;
        let given = with_alert || changed;
        let flight = self.r.flight.as_ref().map(|f| Flight {
            id: f.alert.id.clone(),
            attempt: f.attempt,
            started: f.started,
            remaining: std::time::Duration::from_millis(f.deadline.saturating_sub(now)),
            alert: given.then(|| f.alert.json.clone()),
            duration: given.then(|| std::time::Duration::from_millis(f.alert.duration_ms.into())),
        });
        let skipped = self
            .trail
            .iter()
            .find(|h| h.event == Event::Skipped)
            .map(|h| h.id.clone());
        // `started` answers only what it can change (the Redis store's fast path).
        let wake = match self.quiet {
            true => None,
            false => self.r.held.iter().filter_map(|h| h.approve_at).min(),
        }
        .map(|at| std::time::Duration::from_millis(at.saturating_sub(now)));
        Outcome {
            answer,
            snapshot: Snapshot {
                seq: self.r.seq,
                flight,
                events: self.trail.iter().map(|h| h.event).collect(),
                skipped,
                wake,
                docks: false,
            },
            wake_at: self.r.flight.as_ref().map(|f| f.deadline),
            trail: self.trail,
            recorded: self.recorded,
        }
    }
}

impl Receiver {
    /// Waiting alerts, in both lanes.
    pub fn queued(&self) -> u64 {
        (self.priority.len() + self.queue.len()) as u64
    }

    /// Waiting alerts, in the order they go out.
    pub fn waiting(&self) -> impl Iterator<Item = &Queued> {
        self.priority.iter().chain(self.queue.iter())
    }

    pub fn lane(&mut self, lane: Lane) -> &mut VecDeque<Queued> {
        match lane {
            Lane::Priority => &mut self.priority,
            Lane::Normal => &mut self.queue,
        }
    }

    /// What is left at `now` of the alert in flight: until its duration from its start has
    /// passed once started, all of its duration before.
    pub fn flight_left(&self, now: Millis, rules: &Rules) -> Millis {
        match &self.flight {
            None => 0,
            Some(f) if f.started => f
                .deadline
                .saturating_sub(ms(rules.ack_grace))
                .saturating_sub(now),
            Some(f) => u64::from(f.alert.duration_ms),
        }
    }

    /// How soon an alert with `waiting_ms` of waiting alerts ahead of it can show at `now`.
    pub fn eta(&self, waiting_ms: Millis, now: Millis, rules: &Rules) -> Eta {
        if self.paused {
            return Eta::Paused;
        }
        if self.widgets_on_air(now) == 0 {
            return Eta::NoAudience;
        }
        Eta::In(self.flight_left(now, rules) + waiting_ms)
    }

    /// Live widgets over all nodes at `now`.
    pub fn live_widgets(&self, now: Millis) -> u32 {
        self.presence
            .values()
            .filter(|p| p.live_until > now)
            .map(|p| p.widgets)
            .sum()
    }

    /// Of the live widgets, those on air at `now`.
    pub fn widgets_on_air(&self, now: Millis) -> u32 {
        self.presence
            .values()
            .filter(|p| p.live_until > now)
            .map(|p| p.widgets - p.inactive)
            .sum()
    }

    /// Previews open on all nodes at `now`.
    pub fn previews(&self, now: Millis) -> u32 {
        self.presence
            .values()
            .filter(|p| p.live_until > now)
            .map(|p| p.previews)
            .sum()
    }

    /// Nothing is left of it but its `seq`: a store may forget it, keeping `seq` as a floor.
    pub fn is_idle(&self, now: Millis) -> bool {
        !self.paused
            && self.held.is_empty()
            && self.priority.is_empty()
            && self.queue.is_empty()
            && self.flight.is_none()
            // No live report at all, previews' included.
            && self.presence.values().all(|p| p.live_until <= now)
            && self.idempotency.values().all(|seen| seen.until <= now)
    }
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node-a";

    fn rules() -> Rules {
        Rules {
            start_timeout: std::time::Duration::from_millis(300),
            ack_grace: std::time::Duration::from_millis(200),
            max_queue: 3,
            max_widgets: 2,
            history: 500,
        }
    }

    fn alert(id: &str) -> Stored {
        Stored {
            id: id.into(),
            json: format!(r#"{{"id":"{id}"}}"#).into(),
            duration_ms: 1000,
        }
    }

    fn publish(r: &mut Receiver, id: &str, now: Millis) -> Outcome {
        let command = Command::Publish {
            alert: alert(id),
            idempotency_key: None,
            lane: Lane::Normal,
            hold: None,
        };
        apply(r, command, now, &rules())
    }

    fn join(r: &mut Receiver, now: Millis) -> Outcome {
        let change = WidgetChange::Joined;
        let command = Command::Widgets {
            node: NODE,
            change,
            inactive: 0,
            previews: 0,
        };
        apply(r, command, now, &rules())
    }

    fn flight(o: &Outcome) -> Option<(&str, u32)> {
        o.snapshot.flight.as_ref().map(|f| (&*f.id, f.attempt))
    }

    #[test]
    fn an_alert_goes_out_once_a_widget_joins_and_the_next_after_done() {
        let mut r = Receiver::default();
        let o = publish(&mut r, "a1", 10);
        assert_eq!(
            o.answer,
            Answer::Accepted {
                position: 0,
                eta: Eta::NoAudience
            }
        );
        assert_eq!(flight(&o), None, "no widget yet");
        publish(&mut r, "a2", 11);
        let o = join(&mut r, 12);
        assert_eq!(flight(&o), Some(("a1", 1)));
        assert_eq!(o.wake_at, Some(12 + 300));
        assert_eq!(
            o.trail,
            [Happened {
                event: Event::Sent,
                id: "a1".into(),
                attempt: 1,
                at: 12
            }]
        );
        let done = Command::Done {
            id: "a1",
            unspoken: None,
        };
        let o = apply(&mut r, done, 20, &rules());
        assert_eq!(flight(&o), Some(("a2", 1)));
        assert_eq!(o.snapshot.events, [Event::Done, Event::Sent]);
    }

    #[test]
    fn timing_rules_follow_the_clock_given() {
        let mut r = Receiver::default();
        join(&mut r, 0);
        publish(&mut r, "a1", 0);
        // Not started by 300 ms: sent again, one attempt more.
        let o = apply(&mut r, Command::Check { id: "a1" }, 299, &rules());
        assert_eq!((flight(&o), o.trail.len()), (Some(("a1", 1)), 0));
        let o = apply(&mut r, Command::Check { id: "a1" }, 300, &rules());
        assert_eq!(flight(&o), Some(("a1", 2)));
        assert_eq!(o.snapshot.events, [Event::Resent]);
        // Started at 400: its deadline is its duration plus the grace.
        let o = apply(&mut r, Command::Started { id: "a1" }, 400, &rules());
        assert_eq!(o.wake_at, Some(400 + 1000 + 200));
        let o = apply(&mut r, Command::Check { id: "a1" }, 1600, &rules());
        assert_eq!(flight(&o), None);
        assert_eq!(o.snapshot.events, [Event::Expired]);
    }

    #[test]
    fn a_report_not_refreshed_in_time_stops_counting() {
        let mut r = Receiver::default();
        join(&mut r, 0);
        publish(&mut r, "a1", 0);
        let ttl = ms(super::super::PRESENCE_TTL);
        assert_eq!(r.live_widgets(ttl - 1), 1);
        assert_eq!(r.live_widgets(ttl), 0);
        // Its deadline passing with nobody left puts the alert back at the head.
        let o = apply(&mut r, Command::Check { id: "a1" }, ttl, &rules());
        assert_eq!(flight(&o), None);
        assert_eq!(o.snapshot.events, [Event::Requeued]);
        assert_eq!(r.priority.front().map(|q| q.sent), Some(1));
    }

    #[test]
    fn a_clear_in_chunks_leaves_the_flight_and_what_came_after_it_began() {
        let mut r = Receiver::default();
        join(&mut r, 0);
        for id in ["a1", "a2", "a3"] {
            publish(&mut r, id, 0);
        }
        let clear = |r: &mut Receiver, left| {
            let o = apply(r, Command::Clear { left, most: 1 }, 1, &rules());
            match o.answer {
                Answer::Cleared { ids, left } => (ids, left),
                other => panic!("{other:?}"),
            }
        };
        let (ids, left) = clear(&mut r, None);
        assert_eq!((ids, left.normal), (vec!["a2".into()], 1));
        publish(&mut r, "a4", 2);
        let (ids, left) = clear(&mut r, Some(left));
        assert_eq!((ids, left.normal), (vec!["a3".into()], 0));
        assert_eq!(r.flight.as_ref().map(|f| &*f.alert.id), Some("a1"));
        assert_eq!(
            r.waiting().map(|q| &*q.alert.id).collect::<Vec<_>>(),
            ["a4"]
        );
        assert!(!r.ids.contains("a2"), "a cleared id may be published again");
    }

    #[test]
    fn a_new_receiver_counts_seq_from_the_clock() {
        let mut r = Receiver::default();
        join(&mut r, 0);
        let o = publish(&mut r, "a1", 5);
        assert_eq!(o.snapshot.seq, 5001);
    }
}
