//! A node's hub driven directly, one step at a time: what it reports to the store about the
//! widgets it holds, whatever way each one leaves.

use std::sync::Arc;

use cuebox::hub::{Hub, Widget};
use futures_util::StreamExt;
use serde_json::Value;

use crate::helpers::*;

/// The id of the next alert frame a widget's connection would write.
async fn next_alert_id(widget: &mut Widget) -> String {
    let frame = tokio::time::timeout(PROMPTLY, widget.frames.next())
        .await
        .expect("a frame in time")
        .expect("the outbox is open");
    let frame: Value = serde_json::from_str(&frame).expect("JSON");
    frame["alert"]["id"].as_str().expect("an alert").to_owned()
}

/// A stuck widget (W2) beside a healthy one (W1): the hub lets W2 go when its outbox fills, a
/// refresh reports the widgets, then W2's socket closes. W2 must be counted out once, so the
/// store still counts W1 and leaves W1's alert in flight.
async fn a_widget_the_hub_lets_go_is_counted_out_exactly_once(redis_url: Option<String>) {
    let backing = match redis_url {
        Some(url) => Backing::Redis(url),
        None => Backing::Sqlite,
    };
    let s = make_store(&backing, fast_rules(), "node-a").await;
    let store = s.store.clone();
    let hub = Hub::new(s.store, Arc::default());
    // Alerts one after another, as fast as they come: no pause between them.
    hub.set_default_gap(std::time::Duration::ZERO);
    let alice = receiver("alice");
    let mut w1 = hub.join(&alice).await.expect("W1 joins");
    let mut w2 = hub.join(&alice).await.expect("W2 joins");

    // W1 shows each alert as it comes; W2 never reads, so its outbox overflows.
    for i in 0..100 {
        hub.publish(&record("alice", &format!("alert {i}")), None)
            .await
            .expect("published");
        let id = next_alert_id(&mut w1).await;
        hub.done(&alice, &id).await.expect("done");
    }
    let last = record("alice", "the one W1 is showing");
    hub.publish(&last, None).await.expect("published");
    assert_eq!(next_alert_id(&mut w1).await, last.id);
    hub.started(&alice, &last.id).await.expect("started");

    // W2's connection gets what its outbox held, then the end of its frames, and closes.
    let mut held = 0;
    while tokio::time::timeout(PROMPTLY, w2.frames.next())
        .await
        .expect("the outbox ends")
        .is_some()
    {
        held += 1;
    }
    assert!(held < 101, "W2 was let go, not fed everything: {held}");

    // Until its socket closes, W2 is one of the sockets this node holds, and counts.
    hub.refresh().await;
    assert_eq!(store.status(&alice).await.unwrap().widgets, 2);
    assert_eq!(hub.gauges().await.widgets, 2);
    hub.leave(&w2, false).await;
    hub.refresh().await;

    let status = store.status(&alice).await.unwrap();
    assert_eq!(status.widgets, 1, "W1 is still connected");
    let in_flight: Value = serde_json::from_str(&status.in_flight.expect("W1's alert")).unwrap();
    assert_eq!(in_flight["id"], last.id.as_str());
    assert_eq!(hub.gauges().await.widgets, 1);
    // Nothing was sent again to W1.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), w1.frames.next())
            .await
            .is_err()
    );
    hub.leave(&w1, false).await;
    assert_eq!(store.status(&alice).await.unwrap().widgets, 0);
}

crate::on_both_stores!(a_widget_the_hub_lets_go_is_counted_out_exactly_once);
