//! Several nodes on one Redis: any node may take any publish, any widget, any `done`.

use std::time::Duration;

use crate::helpers::*;

#[actix_web::test]
async fn a_widget_on_one_node_gets_what_was_published_on_another() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut w = a.widget("alice").await;
    b.wait_for_widgets("alice", 1).await;

    let a1 = b.publish_alert("alice", "published on b").await;
    assert_eq!(w.next_alert().await.0, a1);
    w.done(&a1).await;
    let a2 = b.publish_alert("alice", "again on b").await;
    assert_eq!(w.next_alert().await.0, a2);
}

#[actix_web::test]
async fn a_done_on_one_node_advances_the_widgets_of_another() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut on_a = a.widget("alice").await;
    let mut on_b = b.widget("alice").await;
    a.wait_for_widgets("alice", 2).await;

    let a1 = a.publish_alert("alice", "one").await;
    let a2 = a.publish_alert("alice", "two").await;
    assert_eq!(on_a.next_alert().await.0, a1);
    assert_eq!(on_b.next_alert().await.0, a1);
    on_a.expect_silence(Duration::from_millis(300)).await;

    on_b.done(&a1).await;
    assert_eq!(on_a.next_alert().await.0, a2);
    assert_eq!(on_b.next_alert().await.0, a2);
}

#[actix_web::test]
async fn both_nodes_share_the_widget_secret_kept_in_redis() {
    let redis = RedisServer::spawn().await;
    let mut args = serve_args(Some(redis.url()));
    args.secret = None;
    let a = TestApp::spawn(args.clone()).await;
    let b = TestApp::spawn(args).await;
    let receiver = cuebox::alert::ReceiverId::parse("alice").unwrap();
    let secret = match redis.cmd(&["GET", "cuebox:secret"]).await {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("no secret kept: {other:?}"),
    };
    let token = cuebox::auth::ReceiverTokens::new(&secret).token(&receiver);
    for node in [&a, &b] {
        let (status, _) = node
            .get(&format!("/widget/alice?token={token}"), None)
            .await;
        assert_eq!(status, 200);
    }
}

#[actix_web::test]
async fn a_widget_moving_to_another_node_mid_alert_gets_it_again() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut w = a.widget("alice").await;
    let a1 = b.publish_alert("alice", "one").await;
    assert_eq!(w.next_alert().await.0, a1);
    w.started(&a1).await;
    w.close().await;

    let mut w = b.widget("alice").await;
    let (id, attempt, _) = w.next_alert().await;
    assert_eq!((id.as_str(), attempt), (a1.as_str(), 2));
}

#[tokio::test]
async fn a_node_hears_only_the_changes_other_nodes_make_to_its_receivers() {
    let redis = RedisServer::spawn().await;
    hears_only_what_others_change(Backing::Redis(redis.url())).await;
}

#[tokio::test]
async fn on_a_cluster_a_node_hears_the_changes_other_nodes_make_through_sharded_pubsub() {
    let cluster = RedisCluster::spawn().await;
    hears_only_what_others_change(Backing::Cluster(cluster.seeds())).await;
}

async fn hears_only_what_others_change(backing: Backing) {
    use cuebox::store::{Notice, Publish, WidgetChange};

    let mut a = make_store(&backing, fast_rules(), "node-a").await;
    let b = make_store(&backing, fast_rules(), "node-b").await;
    let alice = receiver("alice");
    a.store.watch(&alice).await.unwrap();
    a.store.widgets(&alice, WidgetChange::Joined).await.unwrap();

    // b publishes: a's widget must hear of the new alert in flight, alert and all.
    let alert = record("alice", "from b");
    let Publish::Accepted { snapshot, .. } = b.store.publish(&alert, None).await.unwrap() else {
        panic!("accepted")
    };
    let heard = tokio::time::timeout(PROMPTLY, a.notices.recv())
        .await
        .unwrap();
    match heard {
        Some(Notice::Changed {
            receiver,
            snapshot: s,
        }) => {
            assert_eq!(receiver, alice);
            assert_eq!((s.seq, &s.flight), (snapshot.seq, &snapshot.flight));
            assert!(
                s.events.is_empty(),
                "events stay with the node that caused them"
            );
            assert_eq!(s.flight.unwrap().alert.as_deref(), Some(&*alert.json));
        }
        other => panic!("expected a change, got {other:?}"),
    }
    // a's own change is not echoed back to a.
    a.store.done(&alice, &alert.id).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_millis(300), a.notices.recv()).await;
    assert!(echo.is_err(), "a heard its own change: {echo:?}");
}

#[actix_web::test]
async fn a_connected_widget_gets_alerts_again_once_redis_is_back() {
    let mut redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let mut w = app.widget("alice").await;
    let a1 = app.publish_alert("alice", "before").await;
    assert_eq!(w.next_alert().await.0, a1);
    w.show(&a1).await;
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;

    // Redis comes back empty (no persistence here): the node re-reports its widget on its own,
    // and the widget, still connected, gets what is published next.
    redis.restart().await;
    eventually(|| async { app.get("/readyz", None).await.0 == 200 }).await;
    let (status, body) = app
        .publish(serde_json::json!({ "receiver": "alice", "message": "after" }))
        .await;
    assert_eq!(status, 202, "{body}");
    let a2 = body["id"].as_str().unwrap().to_owned();
    let (id, _, _) = w.next_alert().await;
    assert_eq!(id, a2);
}

#[actix_web::test]
async fn a_stopping_node_lets_its_widgets_go_and_leaves_their_alert_in_flight() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut w = a.widget("alice").await;
    let a1 = b.publish_alert("alice", "one").await;
    b.publish_alert("alice", "two").await;
    assert_eq!(w.next_alert().await.0, a1);
    w.started(&a1).await;

    let stopping = actix_web::rt::spawn(a.stop());
    match w.next_within(PROMPTLY).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1012), "close code: restart"),
        other => panic!("expected a close, got {other:?}"),
    }
    stopping.await.unwrap();
    let status = b.status("alice").await;
    assert_eq!(status["in_flight"]["id"], a1.as_str(), "{status}");
    assert_eq!(
        (status["queued"].as_u64(), status["widgets"].as_u64()),
        (Some(1), Some(0))
    );

    let mut w = b.widget("alice").await;
    let (id, attempt, _) = w.next_alert().await;
    assert_eq!((id.as_str(), attempt), (a1.as_str(), 1));
}

/// The value of one series in a metrics scrape.
fn series(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

crate::on_both_stores!(metrics_count_what_happened_on_this_node);
async fn metrics_count_what_happened_on_this_node(redis_url: Option<String>) {
    // Every store call is timed, on either store, by the command it ran.
    let app = TestApp::spawn(serve_args(redis_url)).await;
    let mut w = app.widget("alice").await;
    let a1 = app.publish_alert("alice", "one").await;
    let (status, _) = app
        .publish(serde_json::json!({ "receiver": "alice", "idempotency_key": "k" }))
        .await;
    assert_eq!(status, 202);
    let (status, _) = app
        .publish(serde_json::json!({ "receiver": "alice", "idempotency_key": "k" }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(w.next_alert().await.0, a1);
    w.show(&a1).await;
    w.next_alert().await;
    app.publish_alert("alice", "waits").await;

    let mut res = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.body().await.unwrap();
    let scrape = String::from_utf8_lossy(&body);
    let expect = [
        ("cuebox_alerts_total{outcome=\"published\"}", 3.0),
        ("cuebox_alerts_total{outcome=\"duplicate\"}", 1.0),
        ("cuebox_alerts_total{outcome=\"sent\"}", 2.0),
        ("cuebox_alerts_total{outcome=\"shown\"}", 1.0),
        ("cuebox_alerts_total{outcome=\"expired\"}", 0.0),
        ("cuebox_alerts_total{outcome=\"skipped\"}", 0.0),
        ("cuebox_alerts_total{outcome=\"filtered\"}", 0.0),
        ("cuebox_widgets_connected", 1.0),
        ("cuebox_receivers_in_flight", 1.0),
        ("cuebox_queue_depth", 1.0),
        ("cuebox_queue_depth_max", 1.0),
        ("cuebox_publish_duration_seconds_count", 4.0),
        ("cuebox_store_errors_total{op=\"done\"}", 0.0),
    ];
    for (name, value) in expect {
        assert_eq!(series(&scrape, name), Some(value), "{name} in\n{scrape}");
    }
    let done_calls = series(
        &scrape,
        "cuebox_store_call_duration_seconds_count{op=\"done\"}",
    );
    assert_eq!(done_calls, Some(1.0), "{scrape}");
    assert!(scrape.ends_with("# EOF\n"));
}

#[actix_web::test]
async fn a_dropped_pubsub_connection_is_restored_and_nothing_published_meanwhile_is_lost() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut w = a.widget("alice").await;
    b.wait_for_widgets("alice", 1).await;

    let killed = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(
        matches!(killed, redis::Value::Int(n) if n >= 1),
        "{killed:?}"
    );
    // Published on b while a may not be listening: a re-reads its receivers once resubscribed.
    let a1 = b.publish_alert("alice", "during the drop").await;
    assert_eq!(w.next_alert().await.0, a1);
    w.show(&a1).await;
    let a2 = b.publish_alert("alice", "after").await;
    assert_eq!(w.next_alert().await.0, a2);
}

#[actix_web::test]
async fn with_aof_on_queued_alerts_survive_a_redis_restart() {
    let mut redis =
        RedisServer::spawn_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let app = TestApp::redis(&redis).await;
    let ids = [
        app.publish_alert("alice", "one").await,
        app.publish_alert("alice", "two").await,
        app.publish_alert("alice", "three").await,
    ];
    redis.restart().await;
    eventually(|| async { app.get("/readyz", None).await.0 == 200 }).await;
    assert_eq!(app.status("alice").await["queued"], 3);
    let mut w = app.widget("alice").await;
    for id in &ids {
        assert_eq!(&w.next_alert().await.0, id);
        w.show(id).await;
    }
}

#[actix_web::test]
async fn two_nodes_on_a_redis_cluster_share_every_receiver() {
    let cluster = RedisCluster::spawn().await;
    let mut args = serve_args(Some(cluster.seeds()));
    args.redis.cluster = true;
    let a = TestApp::spawn(args.clone()).await;
    let b = TestApp::spawn(args).await;
    // Several receivers, so their keys and channels land on different shards.
    for r in ["alice", "bob", "carol", "dave"] {
        let mut w = a.widget(r).await;
        b.wait_for_widgets(r, 1).await;
        let id = b.publish_alert(r, "across the cluster").await;
        assert_eq!(w.next_alert().await.0, id, "{r}");
        let next = b.publish_alert(r, "next").await;
        let mut on_b = b.widget(r).await;
        assert_eq!(
            on_b.next_alert().await.0,
            id,
            "{r}: b's widget joins mid-alert"
        );
        on_b.show(&id).await;
        assert_eq!(w.next_alert().await.0, next, "{r}: done on b advances a");
    }
}

#[actix_web::test]
async fn a_cluster_master_restarting_loses_nothing() {
    let mut cluster =
        RedisCluster::spawn_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let mut args = serve_args(Some(cluster.seeds()));
    args.redis.cluster = true;
    let app = TestApp::spawn(args).await;
    let receivers = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut ids = Vec::new();
    for r in receivers {
        ids.push(app.publish_alert(r, "before the restart").await);
    }
    cluster.nodes[1].restart().await;
    cluster.wait_until_ok().await;
    // The node comes back with its data: every receiver still has its alert, and takes more.
    for (r, id) in receivers.iter().zip(&ids) {
        eventually_within(Duration::from_secs(30), || async {
            let (status, _) = app.get(&format!("/receivers/{r}"), Some(PUBLISH_KEY)).await;
            status == 200
        })
        .await;
        let mut w = app.widget(r).await;
        assert_eq!(&w.next_alert().await.0, id, "{r}");
        w.show(id).await;
        let again = app.publish_alert(r, "after the restart").await;
        assert_eq!(w.next_alert().await.0, again, "{r}");
    }
}

#[actix_web::test]
async fn on_a_cluster_every_live_node_keeps_its_heartbeat() {
    let cluster = RedisCluster::spawn().await;
    let mut args = serve_args(Some(cluster.seeds()));
    args.redis.cluster = true;
    let _a = TestApp::spawn(args.clone()).await;
    let _b = TestApp::spawn(args).await;
    let mut con = cuebox::store::redis::connection::Target::new(&cluster.seeds(), true)
        .connect(None)
        .await
        .unwrap();
    // A node whose heartbeat never lands would be swept as dead by the others, and the alerts
    // its widgets show put back in the queue under them.
    eventually(|| async {
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg("cuebox:nodes")
            .query_async(&mut con.clone())
            .await
            .unwrap();
        let mut alive = 0;
        for node in &nodes {
            let beat: bool = redis::cmd("EXISTS")
                .arg(format!("cuebox:node:{node}"))
                .query_async(&mut con.clone())
                .await
                .unwrap();
            alive += usize::from(beat);
        }
        nodes.len() == 2 && alive == 2
    })
    .await;
    let _: () = redis::cmd("PING").query_async(&mut con).await.unwrap();
}

#[actix_web::test]
async fn a_node_refuses_a_redis_without_functions_and_says_why() {
    // Redis before 7 has no FUNCTION command; a real redis-server without it stands in for one.
    let redis = RedisServer::spawn_with(&["--rename-command", "FUNCTION", ""]).await;
    let built = cuebox::startup::Application::build(serve_args(Some(redis.url()))).await;
    let message = match built {
        Ok(_) => panic!("a node started on a Redis without Functions"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("Redis 7 or newer"), "{message}");
}

#[actix_web::test]
async fn a_redis_that_lost_the_library_gets_it_again_on_the_next_call() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let mut w = app.widget("alice").await;
    // As after a failover to a replica that never had it, or a restart without persistence.
    redis.cmd(&["FUNCTION", "FLUSH"]).await;
    let id = app.publish_alert("alice", "after the flush").await;
    let (got, attempt, _) = w.next_alert().await;
    assert_eq!((got.as_str(), attempt), (id.as_str(), 1));
    let listed = format!("{:?}", redis.cmd(&["FUNCTION", "LIST"]).await);
    assert!(listed.contains("cuebox_v6"), "{listed}");
}

/// The started marks a Redis store keeps (see `Keys::started`).
async fn started_marks(redis: &RedisServer) -> Vec<String> {
    let mut marks: Vec<String> =
        redis::from_redis_value(redis.cmd(&["KEYS", "cuebox:{alice}:started:*"]).await).unwrap();
    marks.sort();
    marks
}

/// A start is marked once per send, and the mark goes when its alert leaves flight: done,
/// skipped, or put back in the queue; a send after that is marked afresh.
#[actix_web::test]
async fn a_start_is_marked_until_its_alert_leaves_flight() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(app.publish_alert("alice", &format!("alert {i}")).await);
    }
    let mark = |id: &str, attempt: u32| format!("cuebox:{{alice}}:started:{id}:{attempt}");

    assert_eq!(w.next_alert().await.0, ids[0]);
    w.started(&ids[0]).await;
    w.started(&ids[0]).await;
    eventually(|| async { started_marks(&redis).await == [mark(&ids[0], 1)] }).await;
    w.done(&ids[0]).await;
    assert_eq!(w.next_alert().await.0, ids[1]);
    assert!(
        started_marks(&redis).await.is_empty(),
        "done takes the mark"
    );

    w.started(&ids[1]).await;
    eventually(|| async { started_marks(&redis).await == [mark(&ids[1], 1)] }).await;
    assert_eq!(app.control("/receivers/alice/skip", None).await.0, 200);
    assert!(
        started_marks(&redis).await.is_empty(),
        "a skip takes the mark"
    );

    assert_eq!(w.next_json().await["type"], "skip");
    let (id, attempt, _) = w.next_alert().await;
    assert_eq!((id.as_str(), attempt), (ids[2].as_str(), 1));
    w.started(&id).await;
    eventually(|| async { started_marks(&redis).await == [mark(&id, 1)] }).await;
    // The last widget leaves: the alert goes back to the head of the queue, unmarked.
    w.close().await;
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;
    assert!(
        started_marks(&redis).await.is_empty(),
        "a requeue takes the mark"
    );

    let mut w = app.widget("alice").await;
    let (again, attempt, _) = w.next_alert().await;
    assert_eq!((again.as_str(), attempt), (id.as_str(), 2));
    w.started(&id).await;
    eventually(|| async { started_marks(&redis).await == [mark(&id, 2)] }).await;
    w.done(&id).await;
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;
    assert!(started_marks(&redis).await.is_empty());
    let (_, body) = app.get("/receivers/alice/history", Some(PUBLISH_KEY)).await;
    assert_eq!(
        trail_of(&body["history"][0]),
        ["received", "sent", "started", "requeued", "sent", "started", "done"]
    );
}

#[actix_web::test]
async fn the_rules_run_on_redis_clock_as_the_node_reads_it() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let mut w = app.widget("alice").await;
    app.publish_alert("alice", "one").await;
    w.next_alert().await;
    // A receiver's first seq is the time of its first change (ms × 1000, plus one), taken from
    // the time the node passed, which is its reading of Redis's TIME.
    let seq: u64 =
        redis::from_redis_value(redis.cmd(&["HGET", "cuebox:{alice}:receiver", "seq"]).await)
            .unwrap();
    let time: Vec<String> = redis::from_redis_value(redis.cmd(&["TIME"]).await).unwrap();
    let redis_ms = time[0].parse::<u64>().unwrap() * 1000 + time[1].parse::<u64>().unwrap() / 1000;
    let node_ms = seq / 1000;
    assert!(
        node_ms <= redis_ms && redis_ms - node_ms < 2_000,
        "the node's clock {node_ms} against Redis's {redis_ms}"
    );
}

#[actix_web::test]
async fn a_preview_on_another_node_hears_every_alert() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut w = a.widget("alice").await;
    let url = format!(
        "{}/ws/alice?token={}&preview=1",
        b.base.replace("http://", "ws://"),
        b.token("alice")
    );
    let mut p = WidgetClient::connect(&url)
        .await
        .expect("the preview connects");
    assert_eq!(p.next_json().await["type"], "hello");
    a.wait_for_widgets("alice", 1).await;
    // Every change is made on a, which holds the only widget: still b's preview hears of it.
    for message in ["one", "two", "three"] {
        let id = a.publish_alert("alice", message).await;
        assert_eq!(w.next_alert().await.0, id);
        assert_eq!(p.next_alert().await.0, id, "{message}");
        w.show(&id).await;
    }
    let status = a.status("alice").await;
    assert_eq!(
        (&status["widgets"], &status["previews"]),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "the preview is no widget, and is counted as a preview: {status}"
    );
}
