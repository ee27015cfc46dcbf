//! This node's subscriptions to receivers' event channels, on a connection of their own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot};

use super::connection::{Pusher, Target};
use super::keys::{Keys, TOPIC_BUCKETS};
use super::replies::parse_notice;
use crate::alert::ReceiverId;
use crate::store::{Notice, StoreError};

/// This node's subscriptions to receivers' event channels.
///
/// `watch` and `unwatch` only count; one task turns the counts into SUBSCRIBE and UNSUBSCRIBE,
/// one receiver at a time and reading the count when it acts, so a quick leave and join can
/// never end unsubscribed while a widget is here. The same task restores every subscription
/// after the connection drops.
pub(super) struct Watches {
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
    pub(super) async fn start(
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

        // Every bucket of broadcast topics, for as long as the node runs: it picks out the
        // topics its subscribers want.
        let topic_channels: Vec<String> =
            (0..TOPIC_BUCKETS).map(|b| keys.topic_channel(b)).collect();
        for channel in &topic_channels {
            con.subscribe(channel).await?;
        }
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
                        let channels: Vec<String> = subscribed
                            .iter()
                            .map(|r| keys.events(r))
                            .chain(topic_channels.iter().cloned())
                            .collect();
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

    pub(super) async fn watch(&self, receiver: &ReceiverId) -> Result<(), StoreError> {
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

    pub(super) fn unwatch(&self, receiver: &ReceiverId) {
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
