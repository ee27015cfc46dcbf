//! The conformance suite: the rules of `src/store/mod.rs`, held against every store.
//!
//! Each case is written once against the `Store` trait; the macro at the bottom runs it on the
//! embedded store and on the Redis store (each case with its own redis-server).

use std::time::Duration;

use cuebox::alert::{ReceiverId, DEFAULT_DURATION_MS};
use cuebox::store::history::Record;
use cuebox::store::machine::{Answer, Command, Hold};
use cuebox::store::{Publish, Rules, Showing, Snapshot, WidgetChange};
use serde_json::json;

use crate::helpers::*;

const NODE: &str = "node-a";

async fn publish(s: &StoreUnderTest, r: &str, message: &str) -> (String, Snapshot) {
    let alert = record(r, message);
    match s.store.publish(&alert, None).await.unwrap() {
        Publish::Accepted { snapshot, .. } => (alert.id, snapshot),
        other => panic!("expected accepted, got {other:?}"),
    }
}

/// Marks alert `id` started as a node does: as the alert in flight with the attempt and `seq` the
/// store last answered (read with a wake, which changes nothing while an alert is in flight),
/// lasting `duration`.
async fn start_lasting(
    s: &StoreUnderTest,
    r: &ReceiverId,
    id: &str,
    duration: Duration,
) -> Snapshot {
    let now = s
        .store
        .apply(r, Command::Wake)
        .await
        .unwrap()
        .into_snapshot()
        .unwrap();
    let f = now.flight.as_ref().filter(|f| &*f.id == id);
    let showing = Showing {
        id,
        attempt: f.expect("a start of the alert in flight").attempt,
        duration,
        seq: now.seq,
        docks: now.docks,
    };
    s.store.started(r, &showing).await.unwrap()
}

/// [`start_lasting`] an alert of the default duration.
async fn start(s: &StoreUnderTest, r: &ReceiverId, id: &str) -> Snapshot {
    let duration = Duration::from_millis(DEFAULT_DURATION_MS.into());
    start_lasting(s, r, id, duration).await
}

fn flight_id(s: &Snapshot) -> Option<String> {
    s.flight.as_ref().map(|f| f.id.to_string())
}

async fn queued(s: &StoreUnderTest, r: &str) -> u64 {
    s.store.status(&receiver(r)).await.unwrap().queued
}

async fn alerts_go_out_one_at_a_time_in_order(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, snap) = publish(&s, "alice", "one").await;
    let f = snap.flight.expect("the first alert goes out at once");
    assert_eq!((f.id.to_string(), f.attempt), (a1.clone(), 1));
    assert!(f.alert.is_some(), "a new flight carries its alert");
    let (a2, snap) = publish(&s, "alice", "two").await;
    assert_eq!(flight_id(&snap), Some(a1.clone()), "the second waits");
    let (a3, _) = publish(&s, "alice", "three").await;
    assert_eq!(queued(&s, "alice").await, 2);

    let snap = s.store.done(&r, &a1).await.unwrap();
    assert_eq!(flight_id(&snap), Some(a2.clone()));
    let snap = s.store.done(&r, &a2).await.unwrap();
    assert_eq!(flight_id(&snap), Some(a3.clone()));
    let snap = s.store.done(&r, &a3).await.unwrap();
    assert_eq!(snap.flight, None);
    assert_eq!(queued(&s, "alice").await, 0);
}

async fn nothing_goes_out_while_no_widget_is_connected(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    let (a1, snap) = publish(&s, "alice", "one").await;
    assert_eq!(snap.flight, None, "no widget, so nothing is in flight");
    let (_a2, _) = publish(&s, "alice", "two").await;
    assert_eq!(queued(&s, "alice").await, 2);

    let snap = s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let f = snap
        .flight
        .expect("the first widget gets the head of the queue");
    assert_eq!((f.id.to_string(), f.attempt), (a1, 1));
    assert_eq!(queued(&s, "alice").await, 1);
}

async fn a_widget_that_joins_mid_alert_gets_the_alert_in_flight(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, first) = publish(&s, "alice", "one").await;
    let snap = s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let f = snap.flight.expect("still in flight");
    assert_eq!(f.id.to_string(), a1);
    assert_eq!(f.attempt, 1, "joining does not resend");
    assert_eq!(snap.seq, first.seq, "joining does not change the flight");
    assert!(f.alert.is_some(), "the joiner is given the alert itself");
    assert_eq!(s.store.status(&r).await.unwrap().widgets, 2);
}

async fn only_a_done_for_the_alert_in_flight_completes_it(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, before) = publish(&s, "alice", "one").await;
    let (a2, _) = publish(&s, "alice", "two").await;
    for other in [a2.as_str(), "not-an-id", ""] {
        let snap = s.store.done(&r, other).await.unwrap();
        assert_eq!(snap.seq, before.seq, "done for {other:?} changed nothing");
        assert_eq!(flight_id(&snap), Some(a1.clone()));
        // A `started` for any other id never reaches a store: a node passes on only a start of
        // the alert in flight as it knows it (`Hub::started`).
    }
    // Two widgets both report done: the first completes, the second is stale.
    let snap = s.store.done(&r, &a1).await.unwrap();
    assert_eq!(flight_id(&snap), Some(a2.clone()));
    let again = s.store.done(&r, &a1).await.unwrap();
    assert_eq!(again.seq, snap.seq);
    assert_eq!(flight_id(&again), Some(a2));
}

async fn the_last_widget_leaving_puts_the_alert_back_at_the_head(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, _) = publish(&s, "alice", "one").await;
    let (a2, _) = publish(&s, "alice", "two").await;
    start(&s, &r, &a1).await;

    let snap = s.store.widgets(&r, WidgetChange::Left).await.unwrap();
    assert_eq!(snap.flight, None);
    assert_eq!(queued(&s, "alice").await, 2);

    let snap = s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let f = snap.flight.expect("sent again to the next widget");
    assert_eq!(
        (f.id.to_string(), f.attempt, f.started),
        (a1.clone(), 2, false)
    );
    let snap = s.store.done(&r, &a1).await.unwrap();
    let f = snap.flight.unwrap();
    assert_eq!((f.id.to_string(), f.attempt), (a2, 1));
}

async fn one_widget_leaving_while_another_stays_keeps_the_alert_in_flight(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, before) = publish(&s, "alice", "one").await;
    let snap = s.store.widgets(&r, WidgetChange::Left).await.unwrap();
    assert_eq!(snap.seq, before.seq);
    assert_eq!(flight_id(&snap), Some(a1));
}

async fn an_alert_never_started_is_sent_again_after_the_start_timeout(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, first) = publish(&s, "alice", "one").await;
    let f = first.flight.clone().unwrap();
    assert!(f.remaining <= fast_rules().start_timeout && !f.started);

    let early = s.store.check(&r, &a1).await.unwrap();
    assert_eq!(early.seq, first.seq, "not due yet");

    tokio::time::sleep(fast_rules().start_timeout + Duration::from_millis(50)).await;
    let snap = s.store.check(&r, &a1).await.unwrap();
    let f = snap.flight.expect("still in flight");
    assert_eq!((f.id.to_string(), f.attempt), (a1, 2));
    assert!(snap.seq > first.seq);
    assert!(f.alert.is_some(), "a resend carries the alert");
}

async fn a_started_alert_never_done_expires_and_the_next_goes_out(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let a1 = record_with(json!({ "receiver": "alice", "duration_ms": 1000 }));
    s.store.publish(&a1, None).await.unwrap();
    let (a2, _) = publish(&s, "alice", "two").await;

    let snap = start_lasting(&s, &r, &a1.id, Duration::from_millis(1000)).await;
    let f = snap.flight.unwrap();
    assert!(f.started);
    let budget = Duration::from_millis(1000) + fast_rules().ack_grace;
    assert!(f.remaining > fast_rules().start_timeout && f.remaining <= budget);

    // Past the start timeout but inside duration + grace: not due.
    tokio::time::sleep(fast_rules().start_timeout + Duration::from_millis(50)).await;
    let snap = s.store.check(&r, &a1.id).await.unwrap();
    assert_eq!(flight_id(&snap), Some(a1.id.clone()));

    tokio::time::sleep(budget).await;
    let snap = s.store.check(&r, &a1.id).await.unwrap();
    assert_eq!(flight_id(&snap), Some(a2), "expired, and the next went out");
    use cuebox::store::Event::{Expired, Sent};
    assert_eq!(snap.events, [Expired, Sent]);
    assert_eq!(queued(&s, "alice").await, 0);
}

async fn a_repeated_idempotency_key_queues_nothing(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let first = record("alice", "one");
    let again = record("alice", "one, retried");
    let Publish::Accepted { position, .. } = s.store.publish(&first, Some("pay-1")).await.unwrap()
    else {
        panic!("accepted")
    };
    let dup = s.store.publish(&again, Some("pay-1")).await.unwrap();
    assert_eq!(
        dup,
        Publish::Duplicate {
            id: first.id.clone(),
            position
        }
    );
    assert_eq!(queued(&s, "alice").await, 1);
    // Keys are per receiver.
    let other = record("bob", "one");
    assert!(matches!(
        s.store.publish(&other, Some("pay-1")).await.unwrap(),
        Publish::Accepted { .. }
    ));
}

async fn the_same_alert_id_published_twice_is_queued_once(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    let first = record("alice", "one");
    let second = record("alice", "two");
    s.store.publish(&first, None).await.unwrap();
    s.store.publish(&second, None).await.unwrap();
    // A retry of the second, as a node makes after a lost answer: answered as the first was.
    let Publish::Accepted { position, .. } = s.store.publish(&second, None).await.unwrap() else {
        panic!("accepted")
    };
    assert_eq!((position, queued(&s, "alice").await), (1, 2));

    // In flight, the same: answered with the alert in flight, nothing queued.
    let snap = s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    assert_eq!(flight_id(&snap).as_deref(), Some(first.id.as_str()));
    let Publish::Accepted {
        position, snapshot, ..
    } = s.store.publish(&first, None).await.unwrap()
    else {
        panic!("accepted")
    };
    assert_eq!(position, 0);
    assert_eq!(flight_id(&snapshot).as_deref(), Some(first.id.as_str()));
    assert_eq!(snapshot.seq, snap.seq);
    assert_eq!(queued(&s, "alice").await, 1);

    // The queue goes on in order, with each alert once.
    let snap = s.store.done(&r, &first.id).await.unwrap();
    assert_eq!(flight_id(&snap).as_deref(), Some(second.id.as_str()));
    let snap = s.store.done(&r, &second.id).await.unwrap();
    assert_eq!(flight_id(&snap), None);
    assert_eq!(queued(&s, "alice").await, 0);
}

async fn a_full_queue_refuses_and_keeps_what_it_has(b: Backing) {
    let mut rules = fast_rules();
    rules.max_queue = 2;
    let s = make_store(&b, rules, NODE).await;
    publish(&s, "alice", "one").await;
    publish(&s, "alice", "two").await;
    let third = record("alice", "three");
    assert_eq!(
        s.store.publish(&third, Some("k3")).await.unwrap(),
        Publish::QueueFull
    );
    assert_eq!(queued(&s, "alice").await, 2);
    // The refused publish did not record its idempotency key either.
    let r = receiver("alice");
    let snap = s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let id = flight_id(&snap).unwrap();
    s.store.done(&r, &id).await.unwrap();
    assert!(matches!(
        s.store.publish(&third, Some("k3")).await.unwrap(),
        Publish::Accepted { .. }
    ));
}

async fn positions_count_the_alerts_ahead(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    for expected in 0..3u64 {
        let a = record("alice", "x");
        let Publish::Accepted { position, .. } = s.store.publish(&a, None).await.unwrap() else {
            panic!("accepted")
        };
        assert_eq!(position, expected);
    }
}

/// How soon each alert can show: the durations ahead and what is left of the alert in flight;
/// where each alert is while queued, in flight and once done.
async fn each_alert_knows_how_soon_it_shows_and_where_it_is(b: Backing) {
    use cuebox::store::history::Mark;
    use cuebox::store::machine::{Eta, Whereabouts};
    use cuebox::store::AlertWhere;
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    let lasting = |ms: u32| record_with(json!({"receiver": "alice", "duration_ms": ms}));
    // No widget: it waits for one.
    let first = lasting(4000);
    let Publish::Accepted { eta, .. } = s.store.publish(&first, None).await.unwrap() else {
        panic!("accepted")
    };
    assert_eq!(eta, Eta::NoAudience);
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    // In flight, not started: all of its duration is still to come.
    let second = lasting(2000);
    let Publish::Accepted { position, eta, .. } = s.store.publish(&second, None).await.unwrap()
    else {
        panic!("accepted")
    };
    assert_eq!((position, eta), (1, Eta::In(4000)));
    let third = lasting(3000);
    let Publish::Accepted { position, eta, .. } = s.store.publish(&third, None).await.unwrap()
    else {
        panic!("accepted")
    };
    assert_eq!((position, eta), (2, Eta::In(6000)));
    // Started: what is left of it counts down with the store's clock.
    start_lasting(&s, &r, &first.id, Duration::from_millis(4000)).await;
    match s.store.locate(&r, &third.id).await.unwrap() {
        Some(Whereabouts::Queued {
            position: 2,
            eta: Eta::In(ms),
        }) => assert!((5000..=6000).contains(&ms), "{ms}"),
        other => panic!("{other:?}"),
    }
    let Some(Whereabouts::InFlight {
        started_at: Some(_),
    }) = s.store.locate(&r, &first.id).await.unwrap()
    else {
        panic!("in flight, started")
    };
    // Paused: nothing says when.
    control(&s, "alice", Command::Pause { paused: true }).await;
    let Publish::Accepted { eta, .. } = s.store.publish(&lasting(1000), None).await.unwrap() else {
        panic!("accepted")
    };
    assert_eq!(eta, Eta::Paused);
    let Some(Whereabouts::Queued {
        eta: Eta::Paused, ..
    }) = s.store.locate(&r, &second.id).await.unwrap()
    else {
        panic!("queued, paused")
    };
    control(&s, "alice", Command::Pause { paused: false }).await;
    // Done: its history says so, and when it showed.
    s.store.done(&r, &first.id).await.unwrap();
    assert_eq!(s.store.locate(&r, &first.id).await.unwrap(), None);
    match s.store.whereabouts(&r, &first.id).await.unwrap() {
        Some(AlertWhere::Ended {
            status: Mark::Done,
            shown_at: Some(_),
        }) => {}
        other => panic!("{other:?}"),
    }
    // The next moved up, and a third one it never had is nowhere.
    let Some(AlertWhere::Here(Whereabouts::Queued { position: 1, .. })) =
        s.store.whereabouts(&r, &third.id).await.unwrap()
    else {
        panic!("queued behind the second")
    };
    assert_eq!(
        s.store.whereabouts(&r, "no-such-alert").await.unwrap(),
        None
    );
}

async fn alert_text_comes_back_byte_for_byte(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    let a = record_with(json!({
        "receiver": "alice",
        "from": "مرحبا 👋🏽",
        "message": "שלום <b>\"quoted\"</b> \\ \n\t 🇧🇷 e\u{301}",
        "data": { "nested": [1, "two", null] }
    }));
    s.store.publish(&a, None).await.unwrap();
    let snap = s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    assert_eq!(snap.flight.unwrap().alert.as_deref(), Some(&*a.json));
    assert_eq!(
        s.store.status(&r).await.unwrap().in_flight.as_deref(),
        Some(&*a.json)
    );
}

async fn every_change_of_the_flight_moves_seq_forward(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    let mut last = s.store.widgets(&r, WidgetChange::Joined).await.unwrap().seq;
    let (a1, snap) = publish(&s, "alice", "one").await;
    assert!(snap.seq > last);
    last = snap.seq;
    let snap = start(&s, &r, &a1).await;
    assert_eq!(
        snap.seq, last,
        "started changes the deadline, not the flight"
    );
    let snap = s.store.done(&r, &a1).await.unwrap();
    assert!(snap.seq > last);
}

async fn seq_never_goes_back_even_for_a_receiver_that_went_idle(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, _) = publish(&s, "alice", "one").await;
    let last = s.store.done(&r, &a1).await.unwrap().seq;
    // Nothing queued, nothing in flight, no widget: a store may forget the receiver now.
    s.store.widgets(&r, WidgetChange::Left).await.unwrap();
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (_, snap) = publish(&s, "alice", "two").await;
    assert!(snap.seq > last, "seq went from {last} back to {}", snap.seq);
}

async fn a_withdrawn_widget_leaves_its_alert_in_flight(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, before) = publish(&s, "alice", "one").await;
    publish(&s, "alice", "two").await;
    let snap = s.store.widgets(&r, WidgetChange::Withdrawn).await.unwrap();
    assert_eq!(snap.seq, before.seq, "nothing moved");
    assert_eq!(flight_id(&snap), Some(a1.clone()));
    let status = s.store.status(&r).await.unwrap();
    assert_eq!((status.widgets, status.queued), (0, 1));
    // Reconnected elsewhere, it is given the same alert, not a new attempt.
    let f = s
        .store
        .widgets(&r, WidgetChange::Joined)
        .await
        .unwrap()
        .flight
        .unwrap();
    assert_eq!((f.id.to_string(), f.attempt), (a1, 1));
}

async fn a_join_past_the_widget_limit_is_refused_and_counts_nothing(b: Backing) {
    let mut rules = fast_rules();
    rules.max_widgets = 2;
    let s = make_store(&b, rules, NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let refused = s.store.widgets(&r, WidgetChange::Joined).await;
    assert!(
        matches!(refused, Err(cuebox::store::StoreError::TooManyWidgets(2))),
        "{refused:?}"
    );
    assert_eq!(s.store.status(&r).await.unwrap().widgets, 2);
    s.store.widgets(&r, WidgetChange::Left).await.unwrap();
    assert!(s.store.widgets(&r, WidgetChange::Joined).await.is_ok());
}

async fn each_transition_says_what_it_did(b: Backing) {
    use cuebox::store::Event::*;
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    assert_eq!(
        s.store
            .widgets(&r, WidgetChange::Joined)
            .await
            .unwrap()
            .events,
        []
    );
    let (a1, snap) = publish(&s, "alice", "one").await;
    assert_eq!(snap.events, [Sent]);
    let (_, snap) = publish(&s, "alice", "two").await;
    assert_eq!(snap.events, []);
    tokio::time::sleep(fast_rules().start_timeout + Duration::from_millis(50)).await;
    assert_eq!(s.store.check(&r, &a1).await.unwrap().events, [Resent]);
    assert_eq!(start(&s, &r, &a1).await.events, []);
    assert_eq!(
        s.store
            .widgets(&r, WidgetChange::Left)
            .await
            .unwrap()
            .events,
        [Requeued]
    );
    assert_eq!(
        s.store
            .widgets(&r, WidgetChange::Joined)
            .await
            .unwrap()
            .events,
        [Sent]
    );
    assert_eq!(s.store.done(&r, &a1).await.unwrap().events, [Done, Sent]);
}

async fn receivers_do_not_share_anything(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let alice = receiver("alice");
    s.store.widgets(&alice, WidgetChange::Joined).await.unwrap();
    publish(&s, "bob", "for bob").await;
    let (a, snap) = publish(&s, "alice", "for alice").await;
    assert_eq!(flight_id(&snap), Some(a));
    assert_eq!(queued(&s, "bob").await, 1);
    assert_eq!(
        s.store.status(&receiver("bob")).await.unwrap().in_flight,
        None
    );
}

async fn control(s: &StoreUnderTest, r: &str, command: Command<'_>) -> Snapshot {
    let answered = s.store.apply(&receiver(r), command).await.unwrap();
    answered.into_snapshot().unwrap()
}

async fn a_paused_receiver_sends_nothing_new_and_finishes_what_is_in_flight(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, _) = publish(&s, "alice", "one").await;
    let snap = control(&s, "alice", Command::Pause { paused: true }).await;
    assert_eq!(
        flight_id(&snap),
        Some(a1.clone()),
        "pause leaves the flight"
    );
    assert!(s.store.status(&r).await.unwrap().paused);
    let (a2, snap) = publish(&s, "alice", "two").await;
    assert_eq!(flight_id(&snap), Some(a1.clone()));
    let snap = s.store.done(&r, &a1).await.unwrap();
    assert_eq!(snap.flight, None, "paused: nothing new goes out");
    // Not even to a widget that joins, nor after a deadline check.
    let snap = s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    assert_eq!(snap.flight, None);
    assert_eq!(queued(&s, "alice").await, 1);
    // Pausing twice is pausing.
    control(&s, "alice", Command::Pause { paused: true }).await;

    let snap = control(&s, "alice", Command::Pause { paused: false }).await;
    let f = snap.flight.expect("resume sends the next at once");
    assert_eq!((f.id.to_string(), f.attempt), (a2, 1));
    assert!(f.alert.is_some(), "the news carries the alert");
    assert!(!s.store.status(&r).await.unwrap().paused);
}

async fn a_pause_is_kept_while_the_receiver_has_nothing_else(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    control(&s, "alice", Command::Pause { paused: true }).await;
    // Nothing queued, no widget: the pause alone is what the receiver holds.
    assert!(s.store.status(&r).await.unwrap().paused);
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (_, snap) = publish(&s, "alice", "one").await;
    assert_eq!(snap.flight, None);
}

async fn a_skip_completes_the_alert_in_flight_and_sends_the_next(b: Backing) {
    use cuebox::store::Event::{Sent, Skipped};
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, first) = publish(&s, "alice", "one").await;
    let (a2, _) = publish(&s, "alice", "two").await;
    start(&s, &r, &a1).await;

    // A skip meant for another alert skips nothing.
    let snap = control(&s, "alice", Command::Skip { id: Some(&a2) }).await;
    assert_eq!((flight_id(&snap), snap.seq), (Some(a1.clone()), first.seq));
    assert_eq!(snap.skipped, None);

    let snap = control(&s, "alice", Command::Skip { id: Some(&a1) }).await;
    assert_eq!(snap.events, [Skipped, Sent]);
    assert_eq!(snap.skipped.as_deref(), Some(a1.as_str()));
    let f = snap.flight.expect("the next goes out");
    assert_eq!(f.id.to_string(), a2);
    assert!(snap.seq > first.seq);
    // Its widget's late done changes nothing.
    let late = s.store.done(&r, &a1).await.unwrap();
    assert_eq!((flight_id(&late), late.seq), (Some(a2.clone()), snap.seq));

    // Without an id, whatever is in flight; with nothing in flight, nothing.
    let snap = control(&s, "alice", Command::Skip { id: None }).await;
    assert_eq!(snap.skipped.as_deref(), Some(a2.as_str()));
    assert_eq!(snap.flight, None);
    let again = control(&s, "alice", Command::Skip { id: None }).await;
    assert_eq!((again.skipped, again.seq), (None, snap.seq));
}

async fn a_skip_while_paused_sends_nothing_new(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, _) = publish(&s, "alice", "one").await;
    publish(&s, "alice", "two").await;
    control(&s, "alice", Command::Pause { paused: true }).await;
    let snap = control(&s, "alice", Command::Skip { id: None }).await;
    assert_eq!(snap.skipped.as_deref(), Some(a1.as_str()));
    assert_eq!(snap.flight, None);
    assert_eq!(queued(&s, "alice").await, 1);
}

async fn publish_high(s: &StoreUnderTest, r: &str, message: &str) -> (String, u64) {
    let alert = record_with(json!({"receiver": r, "message": message, "priority": "high"}));
    match s.store.publish(&alert, None).await.unwrap() {
        Publish::Accepted { position, .. } => (alert.id, position),
        other => panic!("expected accepted, got {other:?}"),
    }
}

async fn high_priority_alerts_go_ahead_of_normal_ones_in_their_own_order(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (n1, _) = publish(&s, "alice", "normal 1").await;
    let (n2, _) = publish(&s, "alice", "normal 2").await;
    let (h1, position) = publish_high(&s, "alice", "high 1").await;
    assert_eq!(position, 1, "only the alert in flight is ahead of it");
    let (h2, position) = publish_high(&s, "alice", "high 2").await;
    assert_eq!(position, 2);
    let alert = record("alice", "normal 3");
    let n3 = alert.id.clone();
    match s.store.publish(&alert, None).await.unwrap() {
        Publish::Accepted { position, .. } => assert_eq!(position, 4),
        other => panic!("expected accepted, got {other:?}"),
    }
    assert_eq!(queued(&s, "alice").await, 4);
    let mut shown = vec![n1.clone()];
    for _ in 0..4 {
        let current = shown.last().unwrap().clone();
        let snap = s.store.done(&r, &current).await.unwrap();
        shown.push(flight_id(&snap).expect("the next goes out"));
    }
    assert_eq!(shown, [n1, h1, h2, n2, n3]);
}

async fn an_alert_put_back_goes_out_again_before_high_priority_ones(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (n1, _) = publish(&s, "alice", "normal 1").await;
    let (h1, _) = publish_high(&s, "alice", "high 1").await;
    s.store.widgets(&r, WidgetChange::Left).await.unwrap();
    let snap = s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let f = snap.flight.expect("sent again");
    assert_eq!((f.id.to_string(), f.attempt), (n1.clone(), 2));
    let snap = s.store.done(&r, &n1).await.unwrap();
    assert_eq!(flight_id(&snap), Some(h1));
}

async fn a_clear_removes_every_waiting_alert_and_never_the_one_in_flight(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, before) = publish(&s, "alice", "on screen").await;
    let mut waiting = Vec::new();
    for i in 0..3 {
        waiting.push(publish(&s, "alice", &format!("normal {i}")).await.0);
    }
    waiting.insert(0, publish_high(&s, "alice", "high").await.0);
    let cleared = s.store.clear(&r).await.unwrap();
    let cleared: Vec<String> = cleared.iter().map(|id| id.to_string()).collect();
    assert_eq!(
        cleared, waiting,
        "every waiting alert, in the order it would have gone out"
    );
    let status = s.store.status(&r).await.unwrap();
    assert_eq!(status.queued, 0);
    assert!(status.in_flight.is_some(), "the alert in flight stays");
    let snap = s.store.done(&r, &a1).await.unwrap();
    assert_eq!(snap.flight, None, "nothing is left to send");
    assert!(snap.seq > before.seq);
    // A cleared alert's id is no longer taken: nothing of it is left.
    assert!(s.store.clear(&r).await.unwrap().is_empty());
}

async fn the_waiting_alerts_read_in_pages_in_the_order_they_go_out(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    publish(&s, "alice", "in flight").await;
    let mut order = Vec::new();
    for i in 0..3 {
        order.push(publish(&s, "alice", &format!("normal {i}")).await.0);
    }
    order.insert(0, publish_high(&s, "alice", "high 0").await.0);
    order.insert(1, publish_high(&s, "alice", "high 1").await.0);
    let ids = |w: &cuebox::store::Waiting| -> Vec<String> {
        w.alerts
            .iter()
            .map(|json| {
                serde_json::from_str::<serde_json::Value>(json).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let all = s.store.waiting(&r, 0, 100).await.unwrap();
    assert_eq!((all.total, ids(&all)), (5, order.clone()));
    for (offset, limit) in [(0, 2), (1, 2), (2, 2), (4, 3), (5, 1), (9, 1)] {
        let page = s.store.waiting(&r, offset, limit).await.unwrap();
        let expected: Vec<String> = order
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .cloned()
            .collect();
        assert_eq!(
            (page.total, ids(&page)),
            (5, expected),
            "offset {offset}, limit {limit}"
        );
    }
    let none = s.store.waiting(&receiver("nobody"), 0, 10).await.unwrap();
    assert_eq!((none.total, none.alerts.len()), (0, 0));
}

/// The marks of a record's trail, by name.
fn marks(r: &Record) -> Vec<&'static str> {
    r.trail.steps().iter().map(|s| s.mark.name()).collect()
}

/// Each record of a page of history as (id, status, the marks of its trail).
fn seen(page: &cuebox::store::history::Page) -> Vec<(String, &'static str, Vec<&'static str>)> {
    page.records
        .iter()
        .map(|rec| (rec.id.to_string(), rec.status.name(), marks(rec)))
        .collect()
}

async fn history_keeps_how_each_alert_ended_with_its_trail(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, _) = publish(&s, "alice", "done").await;
    let (a2, _) = publish(&s, "alice", "skipped").await;
    let (_a3, _) = publish(&s, "alice", "on screen").await;
    let (a4, _) = publish(&s, "alice", "cleared").await;
    start(&s, &r, &a1).await;
    s.store.done(&r, &a1).await.unwrap();
    control(&s, "alice", Command::Skip { id: Some(&a2) }).await;
    s.store.clear(&r).await.unwrap();
    let filtered = record("alice", "filtered");
    s.store.filtered(&filtered).await.unwrap();

    let all = s.store.history(&r, None, 10).await.unwrap();
    assert_eq!(
        seen(&all),
        [
            (
                filtered.id.clone(),
                "filtered",
                vec!["received", "filtered"]
            ),
            (a4.clone(), "cleared", vec!["received", "cleared"]),
            (a2.clone(), "skipped", vec!["received", "sent", "skipped"]),
            (
                a1.clone(),
                "done",
                vec!["received", "sent", "started", "done"]
            ),
        ],
        "newest first"
    );
    assert!(!all.more);
    let done = &all.records[3];
    let steps = done.trail.steps();
    assert_eq!(steps[1].attempt, Some(1), "a send names its attempt");
    assert!(steps.windows(2).all(|w| w[0].at <= w[1].at), "{steps:?}");
    let json: serde_json::Value = serde_json::from_str(&done.json).unwrap();
    assert_eq!(json["message"], "done", "the alert itself is kept");

    let first = s.store.history(&r, None, 2).await.unwrap();
    assert_eq!(first.records.len(), 2);
    assert!(first.more);
    let next = s.store.history(&r, Some(&a4), 2).await.unwrap();
    let ids: Vec<String> = next.records.iter().map(|r| r.id.to_string()).collect();
    assert_eq!((ids, next.more), (vec![a2, a1], false));
    let gone = s
        .store
        .history(&r, Some("not-in-history"), 2)
        .await
        .unwrap();
    assert!(gone.records.is_empty());
    let none = s.store.history(&receiver("nobody"), None, 2).await.unwrap();
    assert!(none.records.is_empty());
}

async fn history_keeps_the_newest_alerts_only(b: Backing) {
    let rules = Rules {
        history: 3,
        ..fast_rules()
    };
    let s = make_store(&b, rules, NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, _) = publish(&s, "alice", &format!("alert {i}")).await;
        s.store.done(&r, &id).await.unwrap();
        ids.push(id);
    }
    let kept = s.store.history(&r, None, 10).await.unwrap();
    let kept: Vec<String> = kept.records.iter().map(|r| r.id.to_string()).collect();
    ids.reverse();
    assert_eq!(kept, ids[..3]);
}

async fn a_replayed_alert_goes_out_next_under_a_new_id(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let (a1, _) = publish(&s, "alice", "again please").await;
    let (_a2, _) = publish(&s, "alice", "normal").await;
    let (h, _) = publish_high(&s, "alice", "high").await;
    let snap = s.store.done(&r, &a1).await.unwrap();
    assert_eq!(flight_id(&snap), Some(h.clone()));

    let kept = s.store.history(&r, None, 1).await.unwrap();
    let replay = cuebox::alert::AlertRecord::replay_of(&r, &kept.records[0].json).unwrap();
    assert_ne!(replay.id, a1);
    let position = match s.store.replay(&replay).await.unwrap() {
        Publish::Accepted { position, .. } => position,
        other => panic!("{other:?}"),
    };
    assert_eq!(position, 1, "next, after the alert in flight");
    let snap = s.store.done(&r, &h).await.unwrap();
    let f = snap.flight.expect("the replay goes out next");
    assert_eq!(f.id.to_string(), replay.id);
    let json: serde_json::Value = serde_json::from_str(f.alert.as_deref().unwrap()).unwrap();
    assert_eq!(
        (json["replay_of"].as_str(), json["message"].as_str()),
        (Some(a1.as_str()), Some("again please"))
    );
}

async fn publish_held(s: &StoreUnderTest, r: &str, message: &str, after: Option<u64>) -> String {
    let alert = record(r, message);
    let hold = Some(Hold {
        approve_after: after,
    });
    match s.store.admit(&alert, None, hold).await.unwrap() {
        Publish::Held { snapshot } => assert_ne!(flight_id(&snapshot), Some(alert.id.clone())),
        other => panic!("expected held, got {other:?}"),
    }
    alert.id
}

async fn held_alerts_wait_for_approval_and_a_denied_one_is_only_recorded(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let held = publish_held(&s, "alice", "held", None).await;
    let status = s.store.status(&r).await.unwrap();
    assert_eq!((status.held, status.queued, status.in_flight), (1, 0, None));
    let waiting = s.store.waiting(&r, 0, 10).await.unwrap();
    assert_eq!(waiting.held.len(), 1);
    let (a2, _) = publish(&s, "alice", "not held").await;

    let answered = s.store.apply(&r, Command::Approve { id: &held }).await;
    assert_eq!(answered.unwrap().answer, Answer::Changed);
    let status = s.store.status(&r).await.unwrap();
    assert_eq!(
        (status.held, status.queued),
        (0, 1),
        "approved: behind the one on screen"
    );
    let again = s.store.apply(&r, Command::Approve { id: &held }).await;
    assert_eq!(again.unwrap().answer, Answer::NotHeld);

    let denied = publish_held(&s, "alice", "denied", None).await;
    let answered = s.store.apply(&r, Command::Deny { id: &denied }).await;
    assert_eq!(answered.unwrap().answer, Answer::Changed);
    assert_eq!(s.store.status(&r).await.unwrap().held, 0);

    let snap = s.store.done(&r, &a2).await.unwrap();
    assert_eq!(flight_id(&snap), Some(held.clone()));
    s.store.done(&r, &held).await.unwrap();
    let history = s.store.history(&r, None, 10).await.unwrap();
    assert_eq!(
        seen(&history),
        [
            (
                held.clone(),
                "done",
                vec!["received", "held", "approved", "sent", "done"]
            ),
            (a2.clone(), "done", vec!["received", "sent", "done"]),
            (denied.clone(), "denied", vec!["received", "held", "denied"]),
        ]
    );
    // A denied alert's id is free again, as a cleared one's is.
    let status = s.store.status(&r).await.unwrap();
    assert_eq!((status.queued, status.held, status.in_flight), (0, 0, None));
}

async fn a_held_alert_approves_itself_when_its_time_comes(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    s.store.widgets(&r, WidgetChange::Joined).await.unwrap();
    let held = publish_held(&s, "alice", "auto", Some(150)).await;
    let early = s.store.apply(&r, Command::Wake).await.unwrap();
    assert_eq!(early.snapshot.and_then(|s| flight_id(&s)), None, "not yet");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let woken = s.store.apply(&r, Command::Wake).await.unwrap();
    let snap = woken.snapshot.unwrap();
    assert_eq!(flight_id(&snap), Some(held.clone()), "approved and sent");
    assert_eq!(s.store.status(&r).await.unwrap().held, 0);
}

async fn widgets_off_air_hold_the_queue_and_the_first_on_air_releases_it(b: Backing) {
    let s = make_store(&b, fast_rules(), NODE).await;
    let r = receiver("alice");
    // Two widgets, both off air (their OBS scenes are not live): nothing goes out.
    s.store.audience(&r, WidgetChange::Joined, 1).await.unwrap();
    let snap = s.store.audience(&r, WidgetChange::Joined, 2).await.unwrap();
    assert_eq!(flight_id(&snap), None);
    let (a1, snap) = publish(&s, "alice", "one").await;
    assert_eq!(
        flight_id(&snap),
        None,
        "an audience off air alone holds the queue"
    );
    let (a2, _) = publish(&s, "alice", "two").await;
    assert_eq!(queued(&s, "alice").await, 2);
    assert_eq!(
        s.store.status(&r).await.unwrap().widgets,
        2,
        "still counted as connected"
    );

    // One goes on air: the head goes out at once.
    let snap = s
        .store
        .audience(&r, WidgetChange::Refresh(2), 1)
        .await
        .unwrap();
    assert_eq!(
        flight_id(&snap),
        Some(a1.clone()),
        "the first on air releases it"
    );
    // Back off air mid-alert: the alert in flight stays (an off-air widget still shows it,
    // silently, and says done), but nothing new goes out after it.
    let snap = s
        .store
        .audience(&r, WidgetChange::Refresh(2), 2)
        .await
        .unwrap();
    assert_eq!(
        flight_id(&snap),
        Some(a1.clone()),
        "off air keeps the alert in flight"
    );
    start(&s, &r, &a1).await;
    let snap = s.store.done(&r, &a1).await.unwrap();
    assert_eq!(
        flight_id(&snap),
        None,
        "done, and the next waits for someone on air"
    );
    assert_eq!(queued(&s, "alice").await, 1);
    // A widget that joins on air (every widget does, until OBS says otherwise) releases it.
    let snap = s.store.audience(&r, WidgetChange::Joined, 2).await.unwrap();
    assert_eq!(flight_id(&snap), Some(a2.clone()));
    // The last widget leaving still puts it back, off air or not.
    s.store
        .audience(&r, WidgetChange::Refresh(1), 1)
        .await
        .unwrap();
    let snap = s.store.audience(&r, WidgetChange::Left, 0).await.unwrap();
    assert_eq!(flight_id(&snap), None);
    assert_eq!(queued(&s, "alice").await, 1, "put back at the head");
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(crate::helpers::Backing::Memory).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(crate::helpers::Backing::Sqlite).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $case() {
                    let cluster = crate::helpers::RedisCluster::spawn().await;
                    super::$case(crate::helpers::Backing::Cluster(cluster.seeds())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let redis = crate::helpers::RedisServer::spawn().await;
                    super::$case(crate::helpers::Backing::Redis(redis.url())).await;
                }
            )*
        }
    };
}

conformance!(
    alerts_go_out_one_at_a_time_in_order,
    widgets_off_air_hold_the_queue_and_the_first_on_air_releases_it,
    nothing_goes_out_while_no_widget_is_connected,
    a_widget_that_joins_mid_alert_gets_the_alert_in_flight,
    only_a_done_for_the_alert_in_flight_completes_it,
    the_last_widget_leaving_puts_the_alert_back_at_the_head,
    one_widget_leaving_while_another_stays_keeps_the_alert_in_flight,
    an_alert_never_started_is_sent_again_after_the_start_timeout,
    a_started_alert_never_done_expires_and_the_next_goes_out,
    a_repeated_idempotency_key_queues_nothing,
    the_same_alert_id_published_twice_is_queued_once,
    a_full_queue_refuses_and_keeps_what_it_has,
    positions_count_the_alerts_ahead,
    each_alert_knows_how_soon_it_shows_and_where_it_is,
    alert_text_comes_back_byte_for_byte,
    every_change_of_the_flight_moves_seq_forward,
    receivers_do_not_share_anything,
    seq_never_goes_back_even_for_a_receiver_that_went_idle,
    a_withdrawn_widget_leaves_its_alert_in_flight,
    a_join_past_the_widget_limit_is_refused_and_counts_nothing,
    each_transition_says_what_it_did,
    a_paused_receiver_sends_nothing_new_and_finishes_what_is_in_flight,
    a_pause_is_kept_while_the_receiver_has_nothing_else,
    a_skip_completes_the_alert_in_flight_and_sends_the_next,
    a_skip_while_paused_sends_nothing_new,
    high_priority_alerts_go_ahead_of_normal_ones_in_their_own_order,
    an_alert_put_back_goes_out_again_before_high_priority_ones,
    a_clear_removes_every_waiting_alert_and_never_the_one_in_flight,
    the_waiting_alerts_read_in_pages_in_the_order_they_go_out,
    history_keeps_how_each_alert_ended_with_its_trail,
    history_keeps_the_newest_alerts_only,
    a_replayed_alert_goes_out_next_under_a_new_id,
    held_alerts_wait_for_approval_and_a_denied_one_is_only_recorded,
    a_held_alert_approves_itself_when_its_time_comes,
);
