//! This node's widgets: who is connected for which receiver, what they were last sent, and the
//! timer that asks the store to check the deadline of the alert in flight.
//!
//! The store decides everything; the hub only relays. Every transition goes through the hub,
//! which calls the store and applies the [`Snapshot`] it answers. Snapshots from other nodes
//! (pub/sub) are applied the same way. A snapshot older than what the hub holds is ignored (its
//! `seq` says so), so the order in which answers and notices arrive does not matter.
//!
//! State sits behind one `std::sync::Mutex`, never held across an `.await`: applying a snapshot
//! is a map lookup and a few channel sends.
//!
//! What a widget is sent is built in [`frames`]: each alert once, with the look its receiver's
//! designs give it and its speech. The hub holds each receiver's designs while it has widgets for
//! it, and the pause between alerts (the gap) is kept here: the store sends the next alert as the
//! last leaves, and the hub holds its frame back for the gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::alert::{AlertRecord, ReceiverId};
use crate::auth::Purpose;
use crate::feed::{Did, Feed};

pub mod frames;
use crate::design::Designs;
use crate::metrics::{HubGauges, Metrics};
use crate::speech::Speech;
use crate::store::machine::{Command, Hold};
use crate::store::{
    Flight, Notice, Publish, Showing, Snapshot, Store, StoreError, WidgetChange, PRESENCE_REFRESH,
};
use frames::skip_frame;
pub use frames::{alert_frame, LoadedDesigns};

/// Frames a widget may have waiting before it counts as too slow and is closed. A widget gets a
/// frame or two per alert, so only a stuck one fills this.
///
/// The outbox is a `futures-channel` queue, which allocates per frame waiting, rather than a
/// tokio one, which allocates room for 32 frames up front: an idle widget then costs a kilobyte
/// less (docs/benchmarks.md, `idle`).
const OUTBOX: usize = 64;
/// Receivers whose reports are refreshed at once.
const REFRESHING: usize = 16;
/// How soon a timer that could not reach the store tries again.
const CHECK_RETRY: Duration = Duration::from_secs(1);
/// How long after a held alert's time it is woken: past it on the store's clock, though this
/// node reads that clock with some error.
const WAKE_MARGIN: Duration = Duration::from_millis(20);
/// How long the store takes a dock to be open after this node last said so; the node says so
/// with every refresh, a third of this.
const DOCKS_FOR: Duration = Duration::from_secs(30);

/// A text frame for a widget, built once and shared by every widget that gets it.
pub type Frame = ByteString;

/// Not a frame for the widget but word to its connection: close with 4001, the token was
/// rotated. A JSON frame never starts with a NUL.
pub const REVOKED: &str = "\0revoked";

pub struct Hub {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// The live feeds of this node's docks, told what this node does.
    pub feed: Feed,
    /// This node's subscribers of broadcast topics.
    pub topics: Arc<crate::topics::Topics>,
    receivers: Mutex<HashMap<ReceiverId, Local>>,
    next_widget: AtomicU64,
    /// A weak self, so timers can reach the hub without keeping it alive.
    me: Weak<Hub>,
    /// Makes the speech of alerts whose receiver reads them out; none until set.
    speech: std::sync::OnceLock<Arc<Speech>>,
    /// The gap between alerts of receivers whose designs set none, in ms (`--alert-gap-ms`).
    default_gap_ms: AtomicU64,
}

/// What this node holds for one receiver.
#[derive(Default)]
struct Local {
    widgets: Vec<LocalWidget>,
    /// The newest snapshot applied.
    seq: u64,
    /// Whether it said some node has a dock open on the receiver's feed.
    docks: bool,
    flight: Option<LocalFlight>,
    timer: Option<AbortHandle>,
    /// Wakes the receiver when a held alert approves itself.
    waker: Option<AbortHandle>,
    /// When this node last saw an alert of the receiver leave flight: the next one's frame waits
    /// out the receiver's gap from then.
    freed_at: Option<Instant>,
    /// The next alert's frame, waiting out the gap.
    sending: Option<AbortHandle>,
    /// The receiver's designs as last read, which each alert sent from here is resolved with:
    /// read when its first widget here joins, and again whenever a node keeps a new version.
    designs: Option<Arc<LoadedDesigns>>,
}

struct LocalWidget {
    id: u64,
    /// A preview: not counted in the store (see [`Seat::preview`]).
    preview: bool,
    /// On air: in OBS, on a scene that is live (every widget is until it says otherwise). One off
    /// air holds the alert in flight but releases nothing new (see `store::Store::audience`).
    on_air: bool,
    outbox: futures_channel::mpsc::Sender<Frame>,
    /// Counted by the store yet. Until then the widget gets no frames: an alert shown by a
    /// widget the store does not count could be put back in the queue (rule f) under it.
    counted: bool,
}

struct LocalFlight {
    id: Arc<str>,
    attempt: u32,
    /// The alert's `duration_ms`: a widget's `started` makes its deadline that plus the grace.
    duration: Duration,
    frame: Frame,
    /// The key of its speech, when this node makes one for it.
    speech: Option<String>,
    /// When this node first sent it, for the age metric.
    since: Instant,
}

/// One connected widget, as its connection holds it: its seat, which the hub's calls for it
/// name, and its frames.
pub struct Widget {
    pub seat: Seat,
    /// Frames for this widget. Closed by the hub when the widget fell too far behind.
    pub frames: futures_channel::mpsc::Receiver<Frame>,
}

/// Which widget it is, apart from its frames: a connection's response may read those itself
/// (see `http::wire`) while its task reports for the widget.
pub struct Seat {
    pub id: u64,
    pub receiver: ReceiverId,
    /// A preview (`?preview=1`): it shows what the receiver's widgets show, but is no audience:
    /// it holds and releases nothing, and its reports are not passed on.
    pub preview: bool,
}

impl std::ops::Deref for Widget {
    type Target = Seat;

    fn deref(&self) -> &Seat {
        &self.seat
    }
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<Self> {
        let topics = Arc::new(crate::topics::Topics::new(metrics.clone()));
        Arc::new_cyclic(|me| Self {
            store,
            metrics,
            feed: Feed::new(topics.clone()),
            topics,
            receivers: Mutex::new(HashMap::new()),
            next_widget: AtomicU64::new(1),
            me: me.clone(),
            speech: std::sync::OnceLock::new(),
            default_gap_ms: AtomicU64::new(crate::design::DEFAULT_GAP.as_millis() as u64),
        })
    }

    /// The gap between alerts of receivers whose designs set none (at start).
    /// The gap between alerts for receivers whose designs set none.
    pub fn default_gap(&self) -> Duration {
        Duration::from_millis(self.default_gap_ms.load(Ordering::Relaxed))
    }

    pub fn set_default_gap(&self, gap: Duration) {
        self.default_gap_ms
            .store(gap.as_millis() as u64, Ordering::Relaxed);
    }

    /// Gives the hub its text-to-speech engine (once, at start).
    pub fn set_speech(&self, speech: Arc<Speech>) {
        let _ = self.speech.set(speech);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ReceiverId, Local>> {
        self.receivers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes an alert; if it went out at once, this node's widgets get it now.
    pub async fn publish(
        &self,
        alert: &AlertRecord,
        idempotency_key: Option<&str>,
    ) -> Result<Publish, StoreError> {
        self.admit(alert, idempotency_key, None).await
    }

    /// Publishes, or with `hold` holds the alert for approval. A held alert that approves itself
    /// is woken here when its time comes, so it goes out at once if the receiver is free (any
    /// later call on the receiver, such as a widget's refresh, approves it too).
    pub async fn admit(
        &self,
        alert: &AlertRecord,
        idempotency_key: Option<&str>,
        hold: Option<Hold>,
    ) -> Result<Publish, StoreError> {
        self.store.route(&alert.receiver).await?;
        let outcome = self.store.admit(alert, idempotency_key, hold).await?;
        if let Publish::Accepted { snapshot, .. } | Publish::Held { snapshot } = &outcome {
            let held = matches!(outcome, Publish::Held { .. });
            let did = Did::Published {
                id: &alert.id,
                held,
            };
            self.tell(&alert.receiver, did, Some(snapshot));
        }
        if let (Publish::Held { .. }, Some(after)) = (&outcome, hold.and_then(|h| h.approve_after))
        {
            // Not kept: this node may hold no widget of the receiver, and the task ends by itself.
            let _ = self.wake_after(&alert.receiver, Duration::from_millis(after) + WAKE_MARGIN);
        }
        Ok(self.accepted(alert, outcome))
    }

    /// Wakes the receiver once, `after` from now.
    fn wake_after(&self, receiver: &ReceiverId, after: Duration) -> AbortHandle {
        let me = self.me.clone();
        let receiver = receiver.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(hub) = me.upgrade() else { return };
            match hub.store.apply(&receiver, Command::Wake).await {
                Ok(answered) => {
                    if let Some(snapshot) = answered.snapshot {
                        hub.tell(&receiver, Did::Other, Some(&snapshot));
                        hub.apply(&receiver, snapshot);
                    }
                }
                Err(e) => tracing::warn!(%receiver, error = %e, "waking held alerts failed"),
            }
        });
        task.abort_handle()
    }

    /// Queues an alert from history again, at the head of the queue.
    pub async fn replay(&self, alert: &AlertRecord) -> Result<Publish, StoreError> {
        self.store.route(&alert.receiver).await?;
        let outcome = self.store.replay(alert).await?;
        if let Publish::Accepted { snapshot, .. } = &outcome {
            let did = Did::Published {
                id: &alert.id,
                held: false,
            };
            self.tell(&alert.receiver, did, Some(snapshot));
        }
        Ok(self.accepted(alert, outcome))
    }

    /// Records an alert moderation kept off screen.
    pub async fn filtered(&self, alert: &AlertRecord) -> Result<(), StoreError> {
        self.store.route(&alert.receiver).await?;
        let snapshot = self.store.filtered(alert).await?;
        let did = Did::Filtered { id: &alert.id };
        self.tell(&alert.receiver, did, snapshot.as_ref());
        Ok(())
    }

    /// Clears the receiver's waiting alerts (see [`Store::clear`]); answers how many went.
    pub async fn clear(&self, receiver: &ReceiverId) -> Result<usize, StoreError> {
        let (cleared, snapshot) = self.store.clear_with_snapshot(receiver).await?;
        let did = Did::Cleared {
            count: cleared.len() as u64,
        };
        self.tell(receiver, did, snapshot.as_ref());
        Ok(cleared.len())
    }

    /// Approves or denies held alert `id`; the answer says whether it was held.
    pub async fn decide(
        &self,
        receiver: &ReceiverId,
        id: &str,
        approved: bool,
    ) -> Result<bool, StoreError> {
        let command = match approved {
            true => Command::Approve { id },
            false => Command::Deny { id },
        };
        let answered = self.store.apply(receiver, command).await?;
        let held = answered.answer != crate::store::machine::Answer::NotHeld;
        if let Some(snapshot) = answered.snapshot {
            if held {
                let did = match approved {
                    true => Did::Approved { id },
                    false => Did::Denied { id },
                };
                self.tell(receiver, did, Some(&snapshot));
            }
            self.apply(receiver, snapshot);
        }
        Ok(held)
    }

    /// Tells the receiver's docks, here and on other nodes, what this node just did, if any
    /// dock anywhere watches it; before the snapshot is applied here, so the alert in flight
    /// before it is still known.
    fn tell(&self, receiver: &ReceiverId, did: Did<'_>, snapshot: Option<&Snapshot>) {
        let elsewhere = snapshot.is_some_and(|s| s.docks);
        if !elsewhere && !self.feed.watched_here(receiver) {
            return;
        }
        let flight_was = self
            .lock()
            .get(receiver)
            .and_then(|l| l.flight.as_ref().map(|f| f.id.clone()));
        let events = Feed::events_of(&did, snapshot, flight_was.as_deref());
        let Some(payload) = self.feed.emit(receiver, &events) else {
            return;
        };
        if elsewhere {
            let store = self.store.clone();
            let receiver = receiver.clone();
            tokio::spawn(async move {
                if let Err(e) = store.publish_feed(&receiver, &payload).await {
                    tracing::debug!(%receiver, error = %e, "could not tell other nodes' docks");
                }
            });
        }
    }

    /// Hands a queued alert's snapshot to this node's widgets.
    fn accepted(&self, alert: &AlertRecord, outcome: Publish) -> Publish {
        if let Publish::Accepted { snapshot, .. } | Publish::Held { snapshot } = &outcome {
            self.apply(&alert.receiver, snapshot.clone());
        }
        outcome
    }

    /// Adds a widget: it is registered here first, so no snapshot can pass it by, then counted
    /// in the store, and only then given the alert in flight, the newest this node knows.
    pub async fn join(&self, receiver: &ReceiverId) -> Result<Widget, StoreError> {
        self.join_as(receiver, false, true).await
    }

    /// Adds a widget, on air or not, or with `preview` a preview: counted in no audience, but
    /// this node reports that it listens, so it hears of every change, and gives it the alert in
    /// flight.
    pub async fn join_as(
        &self,
        receiver: &ReceiverId,
        preview: bool,
        on_air: bool,
    ) -> Result<Widget, StoreError> {
        let id = self.next_widget.fetch_add(1, Ordering::Relaxed);
        let (outbox, frames) = futures_channel::mpsc::channel(OUTBOX);
        self.lock()
            .entry(receiver.clone())
            .or_default()
            .widgets
            .push(LocalWidget {
                id,
                preview,
                on_air,
                outbox,
                counted: false,
            });

        if let Err(e) = self.store.watch(receiver).await {
            self.forget(receiver, id);
            return Err(e);
        }
        let unread = self
            .lock()
            .get(receiver)
            .is_some_and(|l| l.designs.is_none());
        if unread {
            if let Err(e) = self.read_designs(receiver).await {
                self.forget(receiver, id);
                self.store.unwatch(receiver).await;
                return Err(e);
            }
        }
        let (count, off_air, previews) = self.report_of(receiver);
        let change = if preview {
            WidgetChange::Refresh(count)
        } else {
            WidgetChange::Joined
        };
        match self.store.report(receiver, change, off_air, previews).await {
            Ok(snapshot) => {
                if !preview {
                    self.tell_widgets(receiver, true, &snapshot).await;
                }
                self.count_in(receiver, id, snapshot);
                Ok(Widget {
                    seat: Seat {
                        id,
                        receiver: receiver.clone(),
                        preview,
                    },
                    frames,
                })
            }
            Err(e) => {
                // The store may or may not have counted it; the next refresh sets it straight.
                self.forget(receiver, id);
                self.store.unwatch(receiver).await;
                Err(e)
            }
        }
    }

    /// Removes a widget. If it was the last one anywhere, the store puts the alert in flight
    /// back at the head of the queue, unless the widget was `withdrawn` by a stopping node.
    pub async fn leave(&self, widget: &Seat, withdrawn: bool) {
        let receiver = &widget.receiver;
        self.forget(receiver, widget.id);
        self.store.unwatch(receiver).await;
        let (count, off_air, previews) = self.report_of(receiver);
        let change = match (widget.preview, withdrawn) {
            (true, _) => WidgetChange::Refresh(count),
            (false, true) => WidgetChange::Withdrawn,
            (false, false) => WidgetChange::Left,
        };
        match self.store.report(receiver, change, off_air, previews).await {
            Ok(snapshot) => {
                if !widget.preview {
                    self.tell_widgets(receiver, false, &snapshot).await;
                }
                self.apply(receiver, snapshot)
            }
            // The report this node keeps for the receiver expires on its own, or the next
            // refresh corrects it.
            Err(e) => tracing::warn!(%receiver, error = %e, "could not record a widget leaving"),
        }
    }

    /// A widget went on air or off air (OBS showed or hid its scene): the store hears at once,
    /// so the first widget on air releases what an audience off air held.
    pub async fn on_air(&self, widget: &Seat, on_air: bool) {
        let receiver = &widget.receiver;
        if widget.preview {
            return;
        }
        let counts = {
            let mut map = self.lock();
            let Some(local) = map.get_mut(receiver) else {
                return;
            };
            let Some(w) = local.widgets.iter_mut().find(|w| w.id == widget.id) else {
                return;
            };
            if w.on_air == on_air {
                return;
            }
            w.on_air = on_air;
            report_of(local)
        };
        self.refresh_one(receiver, counts).await;
    }

    /// What this node reports of the receiver: its widgets, how many are off air, and its
    /// previews besides.
    fn report_of(&self, receiver: &ReceiverId) -> (u32, u32, u32) {
        self.lock().get(receiver).map_or((0, 0, 0), report_of)
    }

    /// A dock opens the receiver's feed here: it gets what it missed since event `since`, then
    /// every event made here or (once this node hears them) on other nodes. Each `open_feed` is
    /// paired with one [`Hub::close_feed`].
    pub async fn open_feed(
        &self,
        receiver: &ReceiverId,
        since: Option<u64>,
    ) -> Result<crate::feed::Subscription, StoreError> {
        self.store.watch(receiver).await?;
        let subscription = self.feed.subscribe(receiver, since);
        self.mark_docks(receiver).await;
        Ok(subscription)
    }

    /// A dock closed (`subscriber`: its subscription's `live.id`). The node goes on hearing the
    /// receiver's events for [`crate::feed::KEEP_FOR`], so a dock that reconnects here gets what
    /// it missed.
    pub async fn close_feed(&self, receiver: &ReceiverId, subscriber: u64) {
        self.feed.unsubscribe(receiver, subscriber);
        let me = self.me.clone();
        let receiver = receiver.clone();
        tokio::spawn(async move {
            tokio::time::sleep(crate::feed::KEEP_FOR).await;
            if let Some(hub) = me.upgrade() {
                hub.store.unwatch(&receiver).await;
            }
        });
    }

    /// Tells the store this node has a dock on the receiver's feed, for a while.
    async fn mark_docks(&self, receiver: &ReceiverId) {
        if let Err(e) = self.store.docks(receiver, DOCKS_FOR).await {
            tracing::warn!(%receiver, error = %e, "could not mark a dock open");
        }
    }

    /// A widget joined or left: the docks hear it with the count over all nodes, read only if
    /// some dock listens.
    async fn tell_widgets(&self, receiver: &ReceiverId, joined: bool, snapshot: &Snapshot) {
        if !snapshot.docks && !self.feed.watched_here(receiver) {
            return;
        }
        let count = self.store.status(receiver).await.ok().map(|s| s.widgets);
        self.tell(receiver, Did::Widgets { joined, count }, Some(snapshot));
    }

    /// A widget began to show alert `id`. Passed on only for the alert in flight as this node
    /// knows it, which is the alert it sent its widgets: a `started` for any other is a late
    /// one, for an alert the receiver is past, and changes nothing.
    pub async fn started(&self, receiver: &ReceiverId, id: &str) -> Result<(), StoreError> {
        let showing = self.lock().get(receiver).and_then(|local| {
            let f = local.flight.as_ref().filter(|f| &*f.id == id)?;
            Some(Showing {
                id,
                attempt: f.attempt,
                duration: f.duration,
                seq: local.seq,
                docks: local.docks,
            })
        });
        let Some(showing) = showing else {
            return Ok(());
        };
        let snapshot = self.store.started(receiver, &showing).await?;
        self.tell(receiver, Did::Started { id }, Some(&snapshot));
        self.apply(receiver, snapshot);
        Ok(())
    }

    pub async fn done(&self, receiver: &ReceiverId, id: &str) -> Result<(), StoreError> {
        // Shown without its speech: its trail says why. Only this node knows, having made it.
        let unspoken = self
            .local_speech_of(receiver, id)
            .and_then(|key| self.speech.get().and_then(|speech| speech.unspoken(&key)));
        let snapshot = self.store.done_unspoken(receiver, id, unspoken).await?;
        self.tell(receiver, Did::Done { id }, Some(&snapshot));
        self.apply(receiver, snapshot);
        Ok(())
    }

    /// The key of the speech this node made for alert `id`, if it is the receiver's alert in
    /// flight here and has one.
    fn local_speech_of(&self, receiver: &ReceiverId, id: &str) -> Option<String> {
        let map = self.lock();
        let flight = map.get(receiver)?.flight.as_ref()?;
        (&*flight.id == id).then(|| flight.speech.clone())?
    }

    /// A command of the streamer's (pause, resume, skip): applied, and its snapshot handed to
    /// this node's widgets like any other.
    pub async fn control(
        &self,
        receiver: &ReceiverId,
        command: Command<'_>,
    ) -> Result<Snapshot, StoreError> {
        let did = match command {
            Command::Pause { paused } => Did::Paused(paused),
            _ => Did::Other,
        };
        let snapshot = self.store.apply(receiver, command).await?.into_snapshot()?;
        self.tell(receiver, did, Some(&snapshot));
        self.apply(receiver, snapshot.clone());
        Ok(snapshot)
    }

    /// The receiver's widget token was rotated: each of its widgets here is closed with 4001
    /// (see [`REVOKED`]), and one that reconnects with the old token is refused.
    pub fn revoke(&self, receiver: &ReceiverId) {
        let mut map = self.lock();
        if let Some(local) = map.get_mut(receiver) {
            for w in &mut local.widgets {
                if w.outbox.try_send(REVOKED.into()).is_err() {
                    w.outbox.close_channel();
                }
            }
        }
    }

    /// Reads the receiver's newest designs and resolves alerts sent from here with them (from
    /// the next alert on: the one in flight keeps the look it was sent with).
    pub async fn read_designs(&self, receiver: &ReceiverId) -> Result<(), StoreError> {
        let newest = self.store.designs(receiver, 1).await?.into_iter().next();
        let version = newest.as_ref().map_or(0, |v| v.version);
        let designs = Designs::kept_or_built_in(receiver, newest.as_ref().map(|v| &*v.json));
        self.use_designs(receiver, version, designs);
        Ok(())
    }

    /// Resolves alerts sent from here with this version of the receiver's designs, unless a newer
    /// one is held already (two reads, or a read and a put, may cross).
    pub fn use_designs(&self, receiver: &ReceiverId, version: u64, designs: Designs) {
        if let Some(local) = self.lock().get_mut(receiver) {
            if local.designs.as_ref().is_none_or(|d| d.version <= version) {
                local.designs = Some(Arc::new(LoadedDesigns::new(version, designs)));
            }
        }
    }

    /// A node kept new designs for the receiver: read them, if this node shows its alerts.
    pub async fn designs_changed(&self, receiver: &ReceiverId) {
        if !self.lock().contains_key(receiver) {
            return;
        }
        if let Err(e) = self.read_designs(receiver).await {
            tracing::warn!(%receiver, error = %e, "could not read a receiver's new designs");
            // Read again when the next widget joins.
            if let Some(local) = self.lock().get_mut(receiver) {
                local.designs = None;
            }
        }
    }

    /// Applies what another node did.
    pub async fn notice(&self, notice: Notice) {
        match notice {
            Notice::Changed { receiver, snapshot } => self.apply(&receiver, snapshot),
            Notice::Resync => self.refresh().await,
            Notice::Revoked {
                receiver,
                purpose: Purpose::Widget,
            } => self.revoke(&receiver),
            // Docks hold the dashboard token open: their feeds close.
            Notice::Revoked {
                receiver,
                purpose: Purpose::Dashboard,
            } => self.feed.revoke(&receiver),
            Notice::Feed { receiver, payload } => self.feed.heard(&receiver, &payload),
            Notice::Designs { receiver } => self.designs_changed(&receiver).await,
            Notice::Broadcast(sent) => self.topics.deliver(&sent),
        }
    }

    /// Re-reports this node's widgets for every receiver it holds, which keeps the reports live
    /// and re-reads each receiver's alert in flight.
    pub async fn refresh(&self) {
        let held: Vec<(ReceiverId, (u32, u32, u32))> = self
            .lock()
            .iter()
            // Widgets still joining count too: a report one too high for a moment only delays
            // a requeue, while one too low could requeue an alert a widget is showing.
            .map(|(r, l)| (r.clone(), report_of(l)))
            .collect();
        // A few at a time, so the calls share the connection's writes and reads (pipelined) but
        // never crowd out the alerts' calls beside them: with 10,000 idle widgets the node's CPU
        // fell from 8.1 % to 5.4 % (docs/benchmarks.md, `idle`).
        futures_util::stream::iter(held)
            .for_each_concurrent(REFRESHING, |(receiver, report)| async move {
                self.refresh_one(&receiver, report).await;
            })
            .await;
    }

    async fn refresh_one(&self, receiver: &ReceiverId, report: (u32, u32, u32)) {
        let (count, off_air, previews) = report;
        match self
            .store
            .report(receiver, WidgetChange::Refresh(count), off_air, previews)
            .await
        {
            Ok(snapshot) => {
                self.tell(receiver, Did::Other, Some(&snapshot));
                self.apply(receiver, snapshot)
            }
            Err(e) => tracing::warn!(%receiver, error = %e, "could not refresh widgets"),
        }
    }

    /// Runs the hub's background work until the returned handles are aborted: applying notices
    /// from other nodes, and refreshing this node's reports.
    pub fn spawn_background(
        self: &Arc<Self>,
        mut notices: mpsc::UnboundedReceiver<Notice>,
    ) -> Vec<JoinHandle<()>> {
        let hub = self.clone();
        let apply = tokio::spawn(async move {
            while let Some(notice) = notices.recv().await {
                hub.notice(notice).await;
            }
        });
        let hub = self.clone();
        let refresh = tokio::spawn(async move {
            let mut every = tokio::time::interval(PRESENCE_REFRESH);
            every.tick().await;
            loop {
                every.tick().await;
                hub.refresh().await;
                for receiver in hub.feed.watched() {
                    hub.mark_docks(&receiver).await;
                }
            }
        });
        vec![apply, refresh]
    }

    /// This node's widgets and alerts in flight, for `/metrics`.
    ///
    /// Queue depths are read from the store, one call per receiver held here, all at once (they
    /// pipeline on the shared connection); a receiver the store cannot answer for is left out.
    pub async fn gauges(&self) -> HubGauges {
        let (held, mut gauges) = {
            let map = self.lock();
            let now = Instant::now();
            let gauges = HubGauges {
                widgets: map.values().map(|l| l.widgets.len() as u64).sum(),
                in_flight: map.values().filter(|l| l.flight.is_some()).count() as u64,
                oldest_in_flight: map
                    .values()
                    .filter_map(|l| l.flight.as_ref())
                    .map(|f| now.duration_since(f.since))
                    .max()
                    .unwrap_or_default(),
                queued: 0,
                longest_queue: 0,
            };
            (map.keys().cloned().collect::<Vec<_>>(), gauges)
        };
        let depths =
            futures_util::future::join_all(held.iter().map(|r| self.store.status(r))).await;
        for depth in depths.into_iter().flatten().map(|s| s.queued) {
            gauges.queued += depth;
            gauges.longest_queue = gauges.longest_queue.max(depth);
        }
        gauges
    }

    /// Whether the hub still sends to this widget: false once it let it go for falling behind.
    pub fn holds(&self, widget: &Seat) -> bool {
        self.lock().get(&widget.receiver).is_some_and(|l| {
            l.widgets
                .iter()
                .any(|w| w.id == widget.id && !w.outbox.is_closed())
        })
    }

    fn forget(&self, receiver: &ReceiverId, widget: u64) {
        let mut map = self.lock();
        if let Some(local) = map.get_mut(receiver) {
            local.widgets.retain(|w| w.id != widget);
            if local.widgets.is_empty() {
                for timer in [local.timer.take(), local.waker.take(), local.sending.take()]
                    .into_iter()
                    .flatten()
                {
                    timer.abort();
                }
                map.remove(receiver);
            }
        }
    }

    /// The store counts the widget now: apply what its answer says (news for the other
    /// widgets, if any), then give this one the alert in flight.
    fn count_in(&self, receiver: &ReceiverId, widget: u64, snapshot: Snapshot) {
        self.metrics.events(&snapshot.events);
        let mut map = self.lock();
        let Some(local) = map.get_mut(receiver) else {
            return;
        };
        self.apply_to(receiver, local, snapshot);
        if let Some(w) = local.widgets.iter_mut().find(|w| w.id == widget) {
            w.counted = true;
        }
        // While the frame waits out the gap, it goes to this widget with the others.
        let frame = local.flight.as_ref().map(|f| f.frame.clone());
        if let Some(frame) = frame.filter(|_| local.sending.is_none()) {
            send(&mut local.widgets, Some(widget), &frame);
        }
    }

    /// Applies a snapshot of a receiver to this node's widgets.
    pub fn apply(&self, receiver: &ReceiverId, snapshot: Snapshot) {
        self.metrics.events(&snapshot.events);
        let mut map = self.lock();
        if let Some(local) = map.get_mut(receiver) {
            self.apply_to(receiver, local, snapshot);
        }
    }

    fn apply_to(&self, receiver: &ReceiverId, local: &mut Local, snapshot: Snapshot) {
        if let Some(after) = snapshot.wake {
            if let Some(waker) = local.waker.take() {
                waker.abort();
            }
            local.waker = Some(self.wake_after(receiver, after + WAKE_MARGIN));
        }
        if snapshot.seq < local.seq {
            return;
        }
        local.docks = snapshot.docks;
        if let Some(skipped) = snapshot
            .skipped
            .as_deref()
            .filter(|_| snapshot.seq > local.seq)
        {
            // Before the next alert's frame, so a widget clears the skipped one first.
            send(&mut local.widgets, None, &skip_frame(skipped));
        }
        let Some(flight) = snapshot.flight else {
            if snapshot.seq > local.seq {
                local.seq = snapshot.seq;
                if local.flight.take().is_some() {
                    local.freed_at = Some(Instant::now());
                }
                if let Some(sending) = local.sending.take() {
                    sending.abort();
                }
                if let Some(timer) = local.timer.take() {
                    timer.abort();
                }
            }
            return;
        };
        let known = local
            .flight
            .as_ref()
            .is_some_and(|l| l.id == flight.id && l.attempt == flight.attempt);
        if !known {
            let Some(alert) = &flight.alert else {
                // News without the alert itself (a notice was missed): re-read the receiver,
                // which answers with the alert, before moving `seq` on.
                if let Some(hub) = self.me.upgrade() {
                    let receiver = receiver.clone();
                    let report = report_of(local);
                    tokio::spawn(async move { hub.refresh_one(&receiver, report).await });
                }
                return;
            };
            let (frame, speech) = match &local.designs {
                Some(d) => d.frame(alert, flight.attempt, self.speech.get()),
                None => (alert_frame(alert, flight.attempt, None), None),
            };
            let now = Instant::now();
            if local.flight.as_ref().is_some_and(|l| l.id != flight.id) {
                local.freed_at = Some(now);
            }
            // The pause between alerts: the store sent this one as the last left, and each node
            // holds its frame back for the gap from when it saw the last one leave (so every node
            // agrees within the time a notice takes). An alert some widget already started, or a
            // first one, goes at once.
            let gap = local
                .designs
                .as_ref()
                .and_then(|d| d.designs.gap())
                .unwrap_or_else(|| {
                    Duration::from_millis(self.default_gap_ms.load(Ordering::Relaxed))
                });
            let wait = match local.freed_at {
                Some(freed) if !flight.started => (freed + gap).saturating_duration_since(now),
                _ => Duration::ZERO,
            };
            if let Some(sending) = local.sending.take() {
                sending.abort();
            }
            if wait.is_zero() {
                send(&mut local.widgets, None, &frame);
            } else {
                local.sending = Some(self.send_after(receiver, &flight, wait));
            }
            local.flight = Some(LocalFlight {
                id: flight.id.clone(),
                attempt: flight.attempt,
                // Given with the alert. Were it not, a start would set the deadline at the
                // grace alone, and the store, asked then, would set it right.
                duration: flight.duration.unwrap_or_default(),
                frame,
                speech,
                since: Instant::now(),
            });
        }
        local.seq = snapshot.seq;
        self.arm(receiver, local, flight.id, flight.remaining);
    }

    /// Sends the alert in flight's frame after `wait`, if it is still in flight then.
    fn send_after(&self, receiver: &ReceiverId, flight: &Flight, wait: Duration) -> AbortHandle {
        let (me, receiver) = (self.me.clone(), receiver.clone());
        let (id, attempt) = (flight.id.clone(), flight.attempt);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(hub) = me.upgrade() else {
                return;
            };
            let mut map = hub.lock();
            let Some(local) = map.get_mut(&receiver) else {
                return;
            };
            local.sending = None;
            let frame = local
                .flight
                .as_ref()
                .filter(|f| f.id == id && f.attempt == attempt)
                .map(|f| f.frame.clone());
            if let Some(frame) = frame {
                send(&mut local.widgets, None, &frame);
            }
        })
        .abort_handle()
    }

    /// Sets the receiver's one timer: when the deadline passes, the store decides whether the
    /// alert is sent again, expires, or was already done.
    fn arm(&self, receiver: &ReceiverId, local: &mut Local, id: Arc<str>, after: Duration) {
        if let Some(timer) = local.timer.take() {
            timer.abort();
        }
        let me = self.me.clone();
        let receiver = receiver.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // Bounded by the hub's life: the task is aborted with its receiver, or ends when the
            // hub is gone.
            while let Some(hub) = me.upgrade() {
                match hub.store.check(&receiver, &id).await {
                    Ok(snapshot) => {
                        hub.tell(&receiver, Did::Check { id: &id }, Some(&snapshot));
                        return hub.apply(&receiver, snapshot);
                    }
                    Err(e) => {
                        tracing::warn!(%receiver, alert_id = %id, error = %e, "deadline check failed");
                    }
                }
                drop(hub);
                tokio::time::sleep(CHECK_RETRY).await;
            }
        });
        local.timer = Some(task.abort_handle());
    }
}

/// What a node reports of its widgets for a receiver: how many (previews aside), how many of
/// them are off air, and how many previews it has open.
fn report_of(local: &Local) -> (u32, u32, u32) {
    let audience = local.widgets.iter().filter(|w| !w.preview);
    let count = audience.clone().count() as u32;
    let off_air = audience.filter(|w| !w.on_air).count() as u32;
    let previews = local.widgets.iter().filter(|w| w.preview).count() as u32;
    (count, off_air, previews)
}

/// Sends a frame to every counted widget (or one). A widget whose outbox is full is let go: its
/// outbox is closed, so its connection sees the end of its frames and closes.
///
/// It stays in the list until that connection calls [`Hub::leave`]: a widget is counted out in
/// one place only, and until then its socket is still open and still counted in the store.
/// Dropping it here as well would count it out twice, once at the next refresh and once when its
/// socket closes, and the store would requeue an alert another widget is showing.
fn send(widgets: &mut [LocalWidget], only: Option<u64>, frame: &Frame) {
    for w in widgets.iter_mut() {
        if !w.counted || only.is_some_and(|o| o != w.id) || w.outbox.is_closed() {
            continue;
        }
        if w.outbox.try_send(frame.clone()).is_err() {
            w.outbox.close_channel();
        }
    }
}
