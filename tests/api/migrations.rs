//! The Redis key layout: migrated at start, recorded, and never guessed at when newer.

use std::time::Duration;

use cuebox::startup::{Application, StartError};

use crate::helpers::*;

#[actix_web::test]
async fn a_fresh_redis_is_migrated_to_the_latest_layout() {
    let redis = RedisServer::spawn().await;
    let _app = TestApp::redis(&redis).await;
    let version = redis.cmd(&["GET", "cuebox:schema:version"]).await;
    assert_eq!(
        version,
        redis::Value::BulkString(cuebox::migrate::latest().to_string().into_bytes())
    );
    assert_eq!(
        redis.cmd(&["EXISTS", "cuebox:schema:lock"]).await,
        redis::Value::Int(0),
        "the lock is released"
    );
}

#[actix_web::test]
async fn nodes_starting_together_migrate_once_and_all_start() {
    let redis = RedisServer::spawn().await;
    let (a, b, c) = tokio::join!(
        Application::build(serve_args(Some(redis.url()))),
        Application::build(serve_args(Some(redis.url()))),
        Application::build(serve_args(Some(redis.url()))),
    );
    for node in [a, b, c] {
        if let Err(e) = node {
            panic!("a node did not start: {e}");
        }
    }
}

#[actix_web::test]
async fn a_node_refuses_a_layout_newer_than_it_knows() {
    let redis = RedisServer::spawn().await;
    let newer = (cuebox::migrate::latest() + 1).to_string();
    redis.cmd(&["SET", "cuebox:schema:version", &newer]).await;
    match Application::build(serve_args(Some(redis.url()))).await {
        Err(StartError::Migrate(e)) => {
            let message = e.to_string();
            assert!(
                message.contains(&newer) && message.contains("newer"),
                "{message}"
            );
        }
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("a node started against a newer layout"),
    }
    // Another prefix is another layout.
    let mut args = serve_args(Some(redis.url()));
    args.redis.key_prefix = "other".into();
    assert!(Application::build(args).await.is_ok());
}

#[actix_web::test]
async fn the_binary_says_why_it_will_not_start() {
    let redis = RedisServer::spawn().await;
    redis.cmd(&["SET", "cuebox:schema:version", "999"]).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cuebox"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
        ])
        .env_remove("CUEBOX_PUBLISH_KEYS")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("layout is version 999"), "{stderr}");
}

/// A start deadline a minute away, in ms, as layout 1 wrote one.
fn a_minute_from_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (now.as_millis() + 60_000).to_string()
}

/// Layout 1 as the library of the previous release (`cuebox_v1`) left it: the receiver's state in
/// six fields of `<r>:state`, each queued alert's id alone in the queue and its value
/// (`"<duration_ms> <times sent> <json>"`) in `alerts`. Made here from alerts a node queued in
/// layout 2, so their JSON is exactly what a node writes.
async fn rewrite_as_layout_1(redis: &RedisServer, receiver: &str, flight_sent: u32) -> Vec<String> {
    let key = |name: &str| format!("cuebox:{{{receiver}}}:{name}");
    let entries: Vec<String> =
        redis::from_redis_value(redis.cmd(&["LRANGE", &key("queue"), "0", "-1"]).await).unwrap();
    let mut ids = Vec::new();
    redis
        .cmd(&["DEL", &key("queue"), &key("ids"), &key("receiver")])
        .await;
    for (i, entry) in entries.iter().enumerate() {
        let (id, value) = entry.split_once(' ').unwrap();
        ids.push(id.to_owned());
        redis.cmd(&["HSET", &key("alerts"), id, value]).await;
        if i > 0 {
            redis.cmd(&["RPUSH", &key("queue"), id]).await;
        }
    }
    // The first is in flight, sent `flight_sent` times, with its start timeout a minute away.
    let duration = entries[0].split(' ').nth(1).unwrap();
    let deadline = a_minute_from_now();
    let attempt = flight_sent.to_string();
    redis
        .cmd(&[
            "HSET",
            &key("state"),
            "seq",
            "1700000000000005",
            "id",
            &ids[0],
            "attempt",
            &attempt,
            "phase",
            "sent",
            "deadline",
            &deadline,
            "duration",
            duration,
        ])
        .await;
    ids
}

/// Layout 2 is layout 3 without a pause or a priority lane: what a node writes for receivers that
/// never used either. Checked here, key by key, so the test below starts from layout 2 itself.
async fn assert_layout_2(redis: &RedisServer, receiver: &str) {
    let key = |name: &str| format!("cuebox:{{{receiver}}}:{name}");
    let fields: Vec<String> =
        redis::from_redis_value(redis.cmd(&["HKEYS", &key("receiver")]).await).unwrap();
    for field in &fields {
        assert!(
            ["seq", "flight", "alert", "live"].contains(&field.as_str()),
            "{field} is not a field of layout 2"
        );
    }
    assert_eq!(
        redis.cmd(&["EXISTS", &key("priority")]).await,
        redis::Value::Int(0)
    );
}

/// Layouts 2 and 3 keep no trails: a queue entry is "<id> <duration_ms> <times sent> <json>" and
/// the packed flight has five fields. Made here from what a node of layout 4 wrote, by taking the
/// trails out.
async fn strip_trails(redis: &RedisServer, receiver: &str) {
    let key = |name: &str| format!("cuebox:{{{receiver}}}:{name}");
    let strip_entry = |entry: &str| -> String {
        let mut parts = entry.splitn(5, ' ');
        let (id, duration, sent) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let (trail, json) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(!trail.starts_with('{'), "a trail to strip: {entry}");
        format!("{id} {duration} {sent} {json}")
    };
    for lane in ["queue", "priority"] {
        let entries: Vec<String> =
            redis::from_redis_value(redis.cmd(&["LRANGE", &key(lane), "0", "-1"]).await).unwrap();
        redis.cmd(&["DEL", &key(lane)]).await;
        for entry in entries {
            redis
                .cmd(&["RPUSH", &key(lane), &strip_entry(&entry)])
                .await;
        }
    }
    let fields: Vec<Option<String>> = redis::from_redis_value(
        redis
            .cmd(&["HMGET", &key("receiver"), "flight", "alert"])
            .await,
    )
    .unwrap();
    if let [Some(flight), Some(alert)] = &fields[..] {
        let five: Vec<&str> = flight.split('|').next().unwrap().split(' ').collect();
        redis
            .cmd(&[
                "HSET",
                &key("receiver"),
                "flight",
                &five.join(" "),
                "alert",
                &strip_entry(alert),
            ])
            .await;
    }
}

/// Alerts queued by a node of an older layout (`version`, 2 or 3): every one is shown, once, in
/// order, after the upgrade, and each one done is in history.
async fn alerts_are_all_shown_in_order_after_an_upgrade_from(version: &str) {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let mut published = Vec::new();
    for i in 0..4 {
        published.push(app.publish_alert("alice", &format!("alert {i}")).await);
    }
    assert_eq!(w.next_alert().await.0, published[0]);
    // Stopping withdraws the widget: its alert stays in flight.
    app.stop().await;
    drop(w);
    // The durations of the waiting alerts (library v6) were no field of layouts 2 to 5: a
    // receiver they left comes without it, and its etas count short until its queue empties.
    redis
        .cmd(&["HDEL", "cuebox:{alice}:receiver", "wait"])
        .await;
    assert_layout_2(&redis, "alice").await;
    strip_trails(&redis, "alice").await;
    redis.cmd(&["SET", "cuebox:schema:version", version]).await;

    let app = TestApp::redis(&redis).await;
    assert_latest_layout(&redis).await;
    let status = app.status("alice").await;
    assert_eq!(status["queued"], 3, "{status}");
    assert_eq!(status["paused"], false, "{status}");
    assert_eq!(status["in_flight"]["id"], published[0].as_str(), "{status}");
    let high = app
        .publish(serde_json::json!({"receiver": "alice", "message": "high", "priority": "high"}))
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut w = app.widget("alice").await;
    let mut shown = Vec::new();
    for _ in 0..5 {
        let (id, _, _) = w.next_alert().await;
        w.show(&id).await;
        shown.push(id);
    }
    // The alert in flight first, then the high one, then the rest in order.
    let mut expected = vec![published[0].clone(), high];
    expected.extend(published[1..].iter().cloned());
    assert_eq!(shown, expected);
    // Each is in history, done; an alert queued before the upgrade has the trail from then on.
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;
    let (_, body) = app.get("/receivers/alice/history", Some(PUBLISH_KEY)).await;
    let history = body["history"].as_array().unwrap();
    let ids: Vec<&str> = history.iter().map(|e| e["id"].as_str().unwrap()).collect();
    expected.reverse();
    assert_eq!(ids, expected);
    assert!(history.iter().all(|e| e["status"] == "done"));
    assert_eq!(
        trail_of(&history[4]),
        ["started", "done"],
        "in flight at the upgrade"
    );
    assert_eq!(
        trail_of(&history[0]),
        ["sent", "started", "done"],
        "queued before it"
    );
    assert_eq!(
        trail_of(&history[3]),
        ["received", "sent", "started", "done"],
        "after it"
    );
}

async fn assert_latest_layout(redis: &RedisServer) {
    assert_eq!(
        redis.cmd(&["GET", "cuebox:schema:version"]).await,
        redis::Value::BulkString(cuebox::migrate::latest().to_string().into_bytes())
    );
}

/// Layout 4 marked an alert started by rewriting its packed flight: "<id> started <duration>
/// <attempt> <deadline>|<trail>t<started>". Made here from what a node of layout 5 wrote: the
/// flight as sent, and the mark `started:<id>:<attempt>` = "<started> <started + grace>".
async fn as_layout_4_started_flight(redis: &RedisServer, receiver: &str) {
    let key = |name: &str| format!("cuebox:{{{receiver}}}:{name}");
    let flight: String =
        redis::from_redis_value(redis.cmd(&["HGET", &key("receiver"), "flight"]).await).unwrap();
    let (fields, trail) = flight.split_once('|').unwrap();
    let [id, "sent", duration, attempt, _] = fields.split(' ').collect::<Vec<_>>()[..] else {
        panic!("not a flight of layout 5: {flight}");
    };
    let mark = key(&format!("started:{id}:{attempt}"));
    let marked: String = redis::from_redis_value(redis.cmd(&["GET", &mark]).await).unwrap();
    let (at, graced) = marked.split_once(' ').unwrap();
    let deadline = graced.parse::<u64>().unwrap() + duration.parse::<u64>().unwrap();
    let four = format!("{id} started {duration} {attempt} {deadline}|{trail}t{at}");
    redis
        .cmd(&["HSET", &key("receiver"), "flight", &four])
        .await;
    redis.cmd(&["DEL", &mark]).await;
}

/// An alert that had started when a node of layout 4 stopped is still started after the upgrade:
/// at its deadline it expires, where one that never started would go out again, and it is in
/// history with its whole trail.
#[actix_web::test]
async fn an_alert_started_in_layout_4_is_still_started_after_the_upgrade() {
    let redis = RedisServer::spawn().await;
    // A short grace, so the started alert's deadline comes within the test.
    let args = || {
        let mut args = serve_args(Some(redis.url()));
        args.ack_grace_ms = 200;
        args
    };
    let app = TestApp::spawn(args()).await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let (status, body) = app
        .publish(serde_json::json!({"receiver": "alice", "message": "x", "duration_ms": 1000}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(w.next_alert().await.0, id);
    w.started(&id).await;
    eventually(|| async { app.status("alice").await["showing"]["started_at"].is_number() }).await;
    app.stop().await;
    drop(w);
    as_layout_4_started_flight(&redis, "alice").await;
    redis.cmd(&["SET", "cuebox:schema:version", "4"]).await;

    let app = TestApp::spawn(args()).await;
    assert_latest_layout(&redis).await;
    let mut w = app.widget("alice").await;
    let history = || async {
        app.get("/receivers/alice/history", Some(PUBLISH_KEY))
            .await
            .1
    };
    eventually(|| async { history().await["history"][0].is_object() }).await;
    let body = history().await;
    let entry = &body["history"][0];
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["status"], "expired", "{entry}");
    assert_eq!(trail_of(entry), ["received", "sent", "started", "expired"]);
    // Never sent again.
    while let Some(Incoming::Json(frame)) = w.next_within(Duration::from_millis(300)).await {
        if frame["type"] == "alert" {
            assert_eq!(frame["attempt"], 1, "{frame}");
        }
    }
}

#[actix_web::test]
async fn alerts_queued_in_layout_2_are_all_shown_in_order_after_the_upgrade() {
    alerts_are_all_shown_in_order_after_an_upgrade_from("2").await;
}

#[actix_web::test]
async fn alerts_queued_in_layout_3_are_all_shown_in_order_and_kept_in_history_after_the_upgrade() {
    alerts_are_all_shown_in_order_after_an_upgrade_from("3").await;
}

#[actix_web::test]
async fn alerts_queued_in_layout_1_are_all_shown_in_order_after_the_upgrade() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let mut published = Vec::new();
    for i in 0..4 {
        published.push(app.publish_alert("alice", &format!("alert {i}")).await);
    }
    // A receiver with nothing in flight, whose queue is layout 1's: only a publish touched it.
    let bob = app.publish_alert("bob", "bob's").await;
    let bob = bob.as_str();
    app.stop().await;
    let ids = rewrite_as_layout_1(&redis, "alice", 1).await;
    assert_eq!(ids, published);
    let bob_entries: Vec<String> = redis::from_redis_value(
        redis
            .cmd(&["LRANGE", "cuebox:{bob}:queue", "0", "-1"])
            .await,
    )
    .unwrap();
    let (bob_id, bob_value) = bob_entries[0].split_once(' ').unwrap();
    assert_eq!(bob_id, bob);
    redis
        .cmd(&[
            "DEL",
            "cuebox:{bob}:queue",
            "cuebox:{bob}:ids",
            "cuebox:{bob}:receiver",
        ])
        .await;
    redis
        .cmd(&["HSET", "cuebox:{bob}:alerts", bob_id, bob_value])
        .await;
    redis.cmd(&["RPUSH", "cuebox:{bob}:queue", bob_id]).await;
    redis.cmd(&["SET", "cuebox:schema:version", "1"]).await;

    let app = TestApp::redis(&redis).await;
    assert_eq!(
        redis.cmd(&["GET", "cuebox:schema:version"]).await,
        redis::Value::BulkString(cuebox::migrate::latest().to_string().into_bytes())
    );
    let status = app.status("alice").await;
    assert_eq!(status["queued"], 3, "{status}");
    assert_eq!(status["in_flight"]["id"], published[0].as_str(), "{status}");

    // A new alert goes after the old ones.
    let late = app.publish_alert("alice", "after the upgrade").await;
    let mut w = app.widget("alice").await;
    let mut shown = Vec::new();
    for expected_attempt in [1, 1, 1, 1, 1] {
        let (id, attempt, alert) = w.next_alert().await;
        assert_eq!(attempt, expected_attempt, "{alert}");
        assert_eq!(alert["id"], id.as_str());
        w.show(&id).await;
        shown.push(id);
    }
    let mut expected = published.clone();
    expected.push(late);
    assert_eq!(shown, expected);
    assert_eq!(shown.len(), 5);
    // Alice was taken over: her layout-1 state is gone, her seq carried on.
    assert_eq!(
        redis.cmd(&["EXISTS", "cuebox:{alice}:state"]).await,
        redis::Value::Int(0)
    );
    let seq: u64 =
        redis::from_redis_value(redis.cmd(&["HGET", "cuebox:{alice}:receiver", "seq"]).await)
            .unwrap();
    assert!(seq > 1_700_000_000_000_005, "{seq}");
    // Nothing of layout 1 is left behind, and once the last done is in, nothing waits.
    for key in ["cuebox:{alice}:alerts", "cuebox:{alice}:state"] {
        assert_eq!(
            redis.cmd(&["EXISTS", key]).await,
            redis::Value::Int(0),
            "{key}"
        );
    }
    eventually(|| async {
        redis.cmd(&["SCARD", "cuebox:{alice}:ids"]).await == redis::Value::Int(0)
    })
    .await;

    let mut b = app.widget("bob").await;
    let (id, attempt, alert) = b.next_alert().await;
    assert_eq!((id.as_str(), attempt), (bob_id, 1));
    assert_eq!(alert["message"], "bob's");
}

#[actix_web::test]
async fn a_long_layout_1_queue_is_taken_over_whole() {
    let redis = RedisServer::spawn().await;
    // Longer than Lua's unpack() takes at once, so the takeover must work in chunks.
    let ids: Vec<String> = (0..9000).map(|i| format!("carol-{i:05}")).collect();
    let mut hset = vec!["HSET".to_owned(), "cuebox:{carol}:alerts".to_owned()];
    for id in &ids {
        let json = format!(r#"{{"id":"{id}","receiver":"carol","kind":"test","message":"m"}}"#);
        hset.extend([id.clone(), format!("5000 0 {json}")]);
    }
    let hset: Vec<&str> = hset.iter().map(String::as_str).collect();
    redis.cmd(&hset).await;
    let mut rpush = vec!["RPUSH", "cuebox:{carol}:queue"];
    rpush.extend(ids.iter().map(String::as_str));
    redis.cmd(&rpush).await;
    redis
        .cmd(&["HSET", "cuebox:{carol}:state", "seq", "1700000000000005"])
        .await;
    redis.cmd(&["SET", "cuebox:schema:version", "1"]).await;

    let app = TestApp::redis(&redis).await;
    let mut w = app.widget("carol").await;
    for expected in &ids[..3] {
        let (id, attempt, _) = w.next_alert().await;
        assert_eq!((&id, attempt), (expected, 1));
        w.show(&id).await;
    }
    let (id, _, _) = w.next_alert().await;
    assert_eq!(id, ids[3]);
    assert_eq!(
        redis.cmd(&["LLEN", "cuebox:{carol}:queue"]).await,
        redis::Value::Int(8996)
    );
    assert_eq!(
        redis.cmd(&["SCARD", "cuebox:{carol}:ids"]).await,
        redis::Value::Int(8997)
    );
    let last: String =
        redis::from_redis_value(redis.cmd(&["LINDEX", "cuebox:{carol}:queue", "-1"]).await)
            .unwrap();
    assert!(last.starts_with("carol-08999 5000 0 {"), "{last}");
}

/// On a cluster the takeover reads and removes layout 1's keys, which no call names among its
/// keys: Redis Cluster allows that because they share the receiver's hash tag, and so its slot.
#[actix_web::test]
async fn on_a_cluster_a_layout_1_receiver_is_taken_over() {
    let cluster = RedisCluster::spawn().await;
    let port = cluster.nodes[0].port.to_string();
    // `redis-cli -c` follows the cluster to the master that owns the receiver's slot.
    let cli = |args: Vec<String>| {
        let port = port.clone();
        async move {
            let out = tokio::process::Command::new("redis-cli")
                .args(["-c", "-p", &port])
                .args(&args)
                .output()
                .await
                .expect("redis-cli runs");
            assert!(out.status.success(), "{args:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    };
    let ids: Vec<String> = (0..5).map(|i| format!("dave-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let json = format!(r#"{{"id":"{id}","receiver":"dave","kind":"test","message":"m"}}"#);
        let sent = if i == 0 { "1" } else { "0" };
        cli(vec![
            "HSET".into(),
            "cuebox:{dave}:alerts".into(),
            id.clone(),
            format!("5000 {sent} {json}"),
        ])
        .await;
        if i > 0 {
            cli(vec![
                "RPUSH".into(),
                "cuebox:{dave}:queue".into(),
                id.clone(),
            ])
            .await;
        }
    }
    // The first in flight, sent once, its start timeout a minute away.
    let deadline = a_minute_from_now();
    cli([
        "HSET",
        "cuebox:{dave}:state",
        "seq",
        "1700000000000005",
        "id",
        &ids[0],
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        [
            "attempt", "1", "phase", "sent", "deadline", &deadline, "duration", "5000",
        ]
        .map(String::from),
    )
    .collect())
    .await;
    cli(vec![
        "SET".into(),
        "cuebox:schema:version".into(),
        "1".into(),
    ])
    .await;

    let mut args = serve_args(Some(cluster.seeds()));
    args.redis.cluster = true;
    let app = TestApp::spawn(args).await;
    let mut w = app.widget("dave").await;
    for expected in &ids {
        let (id, attempt, _) = w.next_alert().await;
        assert_eq!((&id, attempt), (expected, 1));
        w.show(&id).await;
    }
    assert_eq!(
        cli(vec!["EXISTS".into(), "cuebox:{dave}:state".into()]).await,
        "0"
    );
    assert_eq!(
        cli(vec!["EXISTS".into(), "cuebox:{dave}:alerts".into()]).await,
        "0"
    );
}
