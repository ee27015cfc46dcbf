//! Broadcast topics: `POST /broadcast`, `GET /ws/topics`, who may subscribe, recovery by offset,
//! and slow subscribers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn ws(app: &TestApp, query: &str) -> String {
    format!("{}/ws/topics?{query}", app.base.replace("http://", "ws://"))
}

fn topic_token(patterns: &str) -> String {
    let patterns = cuebox::topics::name::patterns(patterns).unwrap();
    cuebox::auth::ReceiverTokens::new(SECRET).topic_token(&patterns)
}

async fn broadcast(app: &TestApp, body: Value) -> (u16, Value) {
    app.post_raw(
        "/broadcast",
        Some(PUBLISH_KEY),
        "application/json",
        body.to_string(),
    )
    .await
}

async fn app_with(public: &[&str], history: u64) -> TestApp {
    app_on(None, public, history).await
}

/// A node with those public topics and that history, on the Redis at `redis` (or embedded).
async fn app_on(redis: Option<String>, public: &[&str], history: u64) -> TestApp {
    let mut args = serve_args(redis);
    args.public_topics = public.iter().map(|p| p.to_string()).collect();
    args.topic_history = history;
    TestApp::spawn(args).await
}

async fn message(c: &mut WidgetClient) -> Value {
    let v = c.next_json().await;
    assert_eq!(v["type"], "message", "{v}");
    v
}

#[actix_web::test]
async fn a_message_reaches_every_subscriber_of_its_topics_and_only_them() {
    let app = app_with(&[], 100).await;
    let token = topic_token("trending:*");
    let mut all = WidgetClient::connect(&ws(&app, &format!("topics=trending:*&token={token}")))
        .await
        .unwrap();
    let mut pl = WidgetClient::connect(&ws(&app, &format!("topics=trending:PL&token={token}")))
        .await
        .unwrap();
    let (status, body) = broadcast(
        &app,
        json!({"topics": ["trending:NL", "trending:PL"], "event": "new_trending",
               "data": {"title": "<b>Viral</b> 🎉"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap();
    let offsets = &body["offsets"];
    let (nl, pl_offset) = (
        offsets["trending:NL"].as_u64().unwrap(),
        offsets["trending:PL"].as_u64().unwrap(),
    );
    // The pattern gets both, in the order they were sent; the one topic only its own.
    let first = message(&mut all).await;
    let second = message(&mut all).await;
    assert_eq!(
        (
            &first["topic"],
            &first["offset"],
            &second["topic"],
            &second["offset"]
        ),
        (
            &json!("trending:NL"),
            &json!(nl),
            &json!("trending:PL"),
            &json!(pl_offset)
        )
    );
    let only = message(&mut pl).await;
    assert_eq!(only["topic"], "trending:PL");
    assert_eq!(
        (&only["id"], &only["event"], &only["data"]),
        (
            &json!(id),
            &json!("new_trending"),
            &json!({"title": "<b>Viral</b> 🎉"})
        )
    );
    assert!(only["at"].is_u64(), "{only}");
    pl.expect_silence(Duration::from_millis(200)).await;
    // A heartbeat.
    pl.send_json(json!({"type": "ping"})).await;
    assert_eq!(pl.next_json().await, json!({"type": "pong"}));
    app.stop().await;
}

#[actix_web::test]
async fn only_public_topics_and_those_a_token_grants_may_be_subscribed() {
    let app = app_with(&["news:*"], 100).await;
    // Public: no token needed.
    let mut c = WidgetClient::connect(&ws(&app, "topics=news:PL"))
        .await
        .unwrap();
    // Not public and no token, or a token for other topics, or a tampered one: 403 or 401
    // before the upgrade.
    let refused = |q: String| {
        let url = format!("{}/ws/topics?{q}", app.base);
        async move {
            let res = awc::Client::new()
                .get(url)
                .insert_header(("Upgrade", "websocket"))
                .insert_header(("Connection", "Upgrade"))
                .insert_header(("Sec-WebSocket-Version", "13"))
                .insert_header(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }
    };
    assert_eq!(refused("topics=trending:PL".into()).await, 403);
    let other = topic_token("sports:*");
    assert_eq!(
        refused(format!("topics=trending:PL&token={other}")).await,
        403
    );
    let tampered = topic_token("trending:PL").replacen("trending:PL", "trending:*", 1);
    assert_eq!(
        refused(format!("topics=trending:*&token={tampered}")).await,
        401
    );
    // A later subscribe: refused with an error frame, or granted.
    c.send_json(json!({"type": "subscribe", "topic": "trending:PL"}))
        .await;
    let error = c.next_json().await;
    assert_eq!(
        (&error["type"], &error["code"]),
        (&json!("error"), &json!("forbidden_topic")),
        "{error}"
    );
    c.send_json(json!({"type": "subscribe", "topic": "news:NL"}))
        .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "subscribed", "topic": "news:NL"})
    );
    broadcast(&app, json!({"topics": ["news:NL"], "event": "e"})).await;
    assert_eq!(message(&mut c).await["topic"], "news:NL");
    c.send_json(json!({"type": "unsubscribe", "topic": "news:NL"}))
        .await;
    let _ = c.next_json().await;
    broadcast(&app, json!({"topics": ["news:NL"], "event": "e"})).await;
    c.expect_silence(Duration::from_millis(200)).await;
    app.stop().await;
}

#[actix_web::test]
async fn a_subscriber_that_reconnects_gets_what_it_missed_then_the_live_ones() {
    reconnects(app_with(&["t:*"], 3).await).await;
}

#[actix_web::test]
async fn a_subscriber_that_reconnects_gets_what_it_missed_then_the_live_ones_on_redis() {
    let redis = RedisServer::spawn().await;
    reconnects(app_on(Some(redis.url()), &["t:*"], 3).await).await;
}

async fn reconnects(app: TestApp) {
    let mut c = WidgetClient::connect(&ws(&app, "topics=t:a"))
        .await
        .unwrap();
    broadcast(
        &app,
        json!({"topics": ["t:a"], "event": "e", "data": {"n": 0}}),
    )
    .await;
    let last = message(&mut c).await["offset"].as_u64().unwrap();
    c.close().await;
    for n in 1..=2 {
        broadcast(
            &app,
            json!({"topics": ["t:a"], "event": "e", "data": {"n": n}}),
        )
        .await;
    }
    let mut c = WidgetClient::connect(&ws(&app, &format!("topics=t:a&since=t:a:{last}")))
        .await
        .unwrap();
    for n in 1..=2 {
        let m = message(&mut c).await;
        assert_eq!(
            (&m["data"]["n"], &m["offset"]),
            (&json!(n), &json!(last + n))
        );
    }
    broadcast(
        &app,
        json!({"topics": ["t:a"], "event": "e", "data": {"n": 3}}),
    )
    .await;
    assert_eq!(
        message(&mut c).await["offset"],
        last + 3,
        "live, with no repeat"
    );
    c.expect_silence(Duration::from_millis(200)).await;
    c.close().await;
    // More than the topic keeps (3): a reset, then live.
    for n in 4..=8 {
        broadcast(
            &app,
            json!({"topics": ["t:a"], "event": "e", "data": {"n": n}}),
        )
        .await;
    }
    let mut c = WidgetClient::connect(&ws(&app, &format!("topics=t:a&since=t:a:{last}")))
        .await
        .unwrap();
    assert_eq!(
        c.next_json().await,
        json!({"type": "reset", "topic": "t:a"})
    );
    // An offset past any the topic gave (its log was lost since): a reset too.
    let mut c2 = WidgetClient::connect(&ws(&app, "topics=t:a&since=t:a:99999999999999999"))
        .await
        .unwrap();
    assert_eq!(
        c2.next_json().await,
        json!({"type": "reset", "topic": "t:a"})
    );
    broadcast(
        &app,
        json!({"topics": ["t:a"], "event": "e", "data": {"n": 9}}),
    )
    .await;
    // Live from then on. With Redis, messages reach every node by pub/sub, so the last ones
    // published before it subscribed may still come live after the reset: in order, once.
    let mut seen = Vec::new();
    while seen.last() != Some(&9) {
        let n = message(&mut c).await["data"]["n"].as_u64().unwrap();
        assert!(
            n >= 4 && seen.last().is_none_or(|&last| n > last),
            "{n} after {seen:?}"
        );
        seen.push(n);
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_subscriber_that_falls_behind_is_closed_with_1013() {
    use tokio::io::AsyncReadExt;
    let app = app_with(&["t:*"], 100).await;
    // It reads nothing while a few seconds of messages are broadcast: more than its outbox and
    // the socket's buffers hold.
    let mut slow = RawWidget::connect_to(&app, "/ws/topics?topics=t:a", 4096).await;
    // Another, reading all along, gets every message.
    let mut fast = WidgetClient::connect(&ws(&app, "topics=t:a"))
        .await
        .unwrap();
    let reader = actix_web::rt::spawn(async move {
        let mut got = 0;
        while got < 1500 {
            match fast.next_within(PROMPTLY).await {
                Some(Incoming::Json(v)) if v["type"] == "message" => got += 1,
                other => panic!("the reading subscriber got {other:?} after {got}"),
            }
        }
        got
    });
    let data = json!({"pad": "x".repeat(15_900)});
    for _ in 0..1500 {
        let (status, _) =
            broadcast(&app, json!({"topics": ["t:a"], "event": "e", "data": data})).await;
        assert_eq!(status, 202);
    }
    assert_eq!(reader.await.unwrap(), 1500);
    // It reads again: what it was sent ends with a close frame, 1013 (try again later).
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(PROMPTLY, slow.stream.read_to_end(&mut seen)).await;
    let close = [0x88u8, 0x0D, 0x03, 0xF5];
    assert!(
        seen.windows(4).any(|w| w == close),
        "no 1013 close among {} bytes",
        seen.len()
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(metrics.contains("cuebox_topic_drops_total 1"), "{metrics}");
    app.stop().await;
}

#[actix_web::test]
async fn broadcasts_are_checked_and_a_repeated_key_sends_nothing_twice() {
    checked_and_idempotent(app_with(&["t:*"], 100).await).await;
}

#[actix_web::test]
async fn broadcasts_are_checked_and_a_repeated_key_sends_nothing_twice_on_redis() {
    let redis = RedisServer::spawn().await;
    checked_and_idempotent(app_on(Some(redis.url()), &["t:*"], 100).await).await;
}

async fn checked_and_idempotent(app: TestApp) {
    let cases = [
        (json!({"topics": [], "event": "e"}), "topics"),
        (json!({"topics": ["bad topic"], "event": "e"}), "topics"),
        (json!({"topics": ["t:a"]}), "event"),
        (
            json!({"topics": ["t:a"], "event": "e", "data": [1]}),
            "data",
        ),
        (
            json!({"topics": ["t:a"], "event": "e", "data": {"x": "y".repeat(17_000)}}),
            "data",
        ),
        (
            json!({"topics": ["t:a"], "event": "e", "extra": 1}),
            "extra",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = broadcast(&app, body).await;
        assert_eq!(
            (status, &answer["error"]["field"]),
            (400, &json!(field)),
            "{answer}"
        );
    }
    let (status, _) = app
        .post_raw("/broadcast", None, "application/json", "{}")
        .await;
    assert_eq!(status, 401);
    let mut c = WidgetClient::connect(&ws(&app, "topics=t:a"))
        .await
        .unwrap();
    let keyed = |n: u32| {
        app.http
            .post(format!("{}/broadcast", app.base))
            .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Idempotency-Key", "trend-1"))
            .send_body(json!({"topics": ["t:a"], "event": "e", "data": {"n": n}}).to_string())
    };
    let mut first = keyed(1).await.unwrap();
    let first_body: Value = first.json().await.unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let mut again = keyed(2).await.unwrap();
    let again_body: Value = again.json().await.unwrap();
    assert_eq!(again.status().as_u16(), 200, "{again_body}");
    assert_eq!(
        (
            &again_body["id"],
            &again_body["offsets"],
            &again_body["duplicate"]
        ),
        (&first_body["id"], &first_body["offsets"], &json!(true))
    );
    assert_eq!(message(&mut c).await["data"]["n"], 1);
    c.expect_silence(Duration::from_millis(200)).await;
    app.stop().await;
}

#[actix_web::test]
async fn the_topic_token_command_prints_a_token_the_node_takes() {
    let out = cuebox()
        .args(["topic-token", "trending:*", "--secret", SECRET])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token, topic_token("trending:*"));
    let app = app_with(&[], 100).await;
    let mut c = WidgetClient::connect(&ws(&app, &format!("topics=trending:PL&token={token}")))
        .await
        .unwrap();
    broadcast(&app, json!({"topics": ["trending:PL"], "event": "e"})).await;
    assert_eq!(message(&mut c).await["topic"], "trending:PL");
    let bad = cuebox()
        .args(["topic-token", "a b", "--secret", SECRET])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    app.stop().await;
}

/// Two nodes on one Redis (or a Redis Cluster): a message broadcast on either reaches the
/// subscribers of both, once each, and a subscriber that moves to the other node recovers there
/// by offset.
async fn topics_span_nodes(redis_url: String, cluster: bool) {
    let mut args = serve_args(Some(redis_url));
    args.redis.cluster = cluster;
    args.public_topics = vec!["t:*".into()];
    let a = TestApp::spawn(args.clone()).await;
    let b = TestApp::spawn(args).await;
    let mut on_a = WidgetClient::connect(&ws(&a, "topics=t:*")).await.unwrap();
    let mut on_b = WidgetClient::connect(&ws(&b, "topics=t:x")).await.unwrap();
    let (status, body) = broadcast(
        &a,
        json!({"topics": ["t:x", "t:y"], "event": "e", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let x = body["offsets"]["t:x"].as_u64().unwrap();
    let from_a: Vec<Value> = vec![message(&mut on_a).await, message(&mut on_a).await];
    let from_b = message(&mut on_b).await;
    assert_eq!(from_b["offset"], x);
    // Byte for byte the frame the publishing node made. Two topics keep no order between them
    // (on a cluster they may live on two shards).
    let mut topics: Vec<&str> = from_a.iter().filter_map(|m| m["topic"].as_str()).collect();
    topics.sort_unstable();
    assert_eq!(topics, ["t:x", "t:y"]);
    let x_on_a = from_a.iter().find(|m| m["topic"] == "t:x");
    assert_eq!(Some(&from_b), x_on_a, "{from_a:?}");
    on_b.expect_silence(Duration::from_millis(200)).await;
    // The subscriber on b leaves; two more go out from b; it comes back on a with its offset.
    on_b.close().await;
    for n in 2..=3 {
        broadcast(
            &b,
            json!({"topics": ["t:x"], "event": "e", "data": {"n": n}}),
        )
        .await;
    }
    let mut back = WidgetClient::connect(&ws(&a, &format!("topics=t:x&since=t:x:{x}")))
        .await
        .unwrap();
    for n in 2..=3u64 {
        let m = message(&mut back).await;
        assert_eq!(
            (&m["offset"], &m["data"]["n"]),
            (&json!(x + n - 1), &json!(n))
        );
    }
    broadcast(
        &b,
        json!({"topics": ["t:x"], "event": "e", "data": {"n": 4}}),
    )
    .await;
    assert_eq!(message(&mut back).await["data"]["n"], 4);
    back.expect_silence(Duration::from_millis(200)).await;
    a.stop().await;
    b.stop().await;
}

#[actix_web::test]
async fn topics_span_nodes_on_redis() {
    let redis = RedisServer::spawn().await;
    topics_span_nodes(redis.url(), false).await;
}

#[actix_web::test]
async fn topics_span_nodes_on_a_redis_cluster() {
    let cluster = RedisCluster::spawn().await;
    topics_span_nodes(cluster.seeds(), true).await;
}

/// `--bridge 'tvs:*=trending:'`, fed by a real `redis-cli PUBLISH`: each message is republished
/// once (two nodes bridge, one at a time), and one that is not a JSON object is counted, not
/// fatal.
#[actix_web::test]
async fn the_bridge_republishes_redis_pub_sub_once() {
    let redis = RedisServer::spawn().await;
    bridged(serve_args(Some(redis.url())), redis.port).await;
}

/// On a Redis Cluster, a message published on any of its nodes is bridged (classic pub/sub
/// reaches every node of a cluster; the bridge listens on the first seed).
#[actix_web::test]
async fn the_bridge_republishes_redis_pub_sub_once_on_a_cluster() {
    let cluster = RedisCluster::spawn().await;
    let mut args = serve_args(Some(cluster.seeds()));
    args.redis.cluster = true;
    bridged(args, cluster.nodes[2].port).await;
}

async fn bridged(mut args: cuebox::config::ServeArgs, publish_port: u16) {
    args.public_topics = vec!["trending:*".into()];
    args.bridge = vec!["tvs:*=trending:".into()];
    let a = TestApp::spawn(args.clone()).await;
    let b = TestApp::spawn(args).await;
    let mut c = WidgetClient::connect(&ws(&b, "topics=trending:PL"))
        .await
        .unwrap();
    let publish = |payload: &'static str| {
        let port = publish_port.to_string();
        async move {
            let out = tokio::process::Command::new("redis-cli")
                .args(["-p", &port, "PUBLISH", "tvs:PL", payload])
                .output()
                .await
                .expect("redis-cli runs");
            assert!(out.status.success(), "{out:?}");
        }
    };
    // Until a node holds the bridge (it takes it at start, and one does within a lease).
    let deadline = std::time::Instant::now() + PROMPTLY;
    let first = loop {
        publish(r#"{"title":"Viral in Poland"}"#).await;
        if let Some(Incoming::Json(v)) = c.next_within(Duration::from_millis(300)).await {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "never bridged");
    };
    assert_eq!(
        (&first["topic"], &first["event"], &first["data"]),
        (
            &json!("trending:PL"),
            &json!("tvs:PL"),
            &json!({"title": "Viral in Poland"})
        )
    );
    publish(r#"{"n":2}"#).await;
    assert_eq!(message(&mut c).await["data"], json!({"n": 2}));
    c.expect_silence(Duration::from_millis(300)).await;
    publish("not json").await;
    eventually(|| async {
        let metrics = [
            a.get_text("/metrics").await.1,
            b.get_text("/metrics").await.1,
        ];
        metrics
            .iter()
            .any(|m| m.contains("cuebox_bridge_rejected_total 1"))
    })
    .await;
    publish(r#"{"n":3}"#).await;
    assert_eq!(message(&mut c).await["data"], json!({"n": 3}));
    c.expect_silence(Duration::from_millis(300)).await;
    a.stop().await;
    b.stop().await;
}

/// `--max-connections-per-ip`: past it, 429 before the upgrade; a place comes back when one of
/// that address's connections closes.
#[actix_web::test]
async fn one_address_holds_at_most_its_subscriber_connections() {
    let mut args = serve_args(None);
    args.public_topics = vec!["t:*".into()];
    args.max_connections_per_ip = 2;
    let app = TestApp::spawn(args).await;
    let first = WidgetClient::connect(&ws(&app, "topics=t:a"))
        .await
        .unwrap();
    let _second = WidgetClient::connect(&ws(&app, "topics=t:a"))
        .await
        .unwrap();
    match WidgetClient::connect(&ws(&app, "topics=t:a")).await {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 429)
        }
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => panic!("a third connection from one address"),
    }
    first.close().await;
    let deadline = std::time::Instant::now() + PROMPTLY;
    while WidgetClient::connect(&ws(&app, "topics=t:a"))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// Publishes to one topic at once, from several connections: every subscriber gets every
/// message, in the order of its offsets (a message delivered after a later one would be taken
/// for one already seen, and lost).
async fn concurrent_broadcasts_all_arrive_in_order(app: TestApp) {
    let mut c = WidgetClient::connect(&ws(&app, "topics=t:a"))
        .await
        .unwrap();
    let posts = (0..100).map(|n| {
        let app = &app;
        async move {
            broadcast(
                app,
                json!({"topics": ["t:a"], "event": "e", "data": {"n": n}}),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(posts).await;
    assert!(answers.iter().all(|(status, _)| *status == 202));
    let mut last = 0;
    for _ in 0..100 {
        let offset = message(&mut c).await["offset"].as_u64().unwrap();
        assert!(offset > last, "{offset} after {last}");
        last = offset;
    }
    c.expect_silence(Duration::from_millis(200)).await;
    app.stop().await;
}

#[actix_web::test]
async fn concurrent_broadcasts_all_arrive_in_order_on_the_embedded_store() {
    concurrent_broadcasts_all_arrive_in_order(app_with(&["t:*"], 100).await).await;
}

#[actix_web::test]
async fn concurrent_broadcasts_all_arrive_in_order_on_redis() {
    let redis = RedisServer::spawn().await;
    concurrent_broadcasts_all_arrive_in_order(app_on(Some(redis.url()), &["t:*"], 100).await).await;
}

/// The bridge republishes Redis pub/sub: with the embedded store, the node says so and stops.
#[actix_web::test]
async fn the_bridge_needs_the_redis_store() {
    let out = cuebox()
        .args([
            "serve",
            "--in-memory",
            "--bind",
            "127.0.0.1:0",
            "--bridge",
            "tvs:*=trending:",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--bridge") && said.contains("Redis"),
        "{said}"
    );
}

#[actix_web::test]
async fn a_docks_feed_shares_the_fan_out_but_no_topic_subscriber_gets_it() {
    // Every topic public, `*` subscribed: a receiver's feed goes out on a topic of the node's
    // own, which no pattern a client may give reaches.
    let app = app_with(&["*"], 100).await;
    let mut everything = WidgetClient::connect(&ws(&app, "topics=*")).await.unwrap();
    let feed = format!(
        "{}/ws/alice/feed?token={}",
        app.base.replace("http://", "ws://"),
        app.dashboard_token("alice")
    );
    let mut dock = WidgetClient::connect(&feed).await.unwrap();
    let id = app.publish_alert("alice", "hi").await;
    let frame = dock.next_json().await;
    assert_eq!(
        (&frame["type"], &frame["event"], &frame["alert_id"]),
        (&json!("event"), &json!("queued"), &json!(id)),
        "{frame}"
    );
    let (status, _) = broadcast(&app, json!({"topics": ["t:a"], "event": "e"})).await;
    assert_eq!(status, 202);
    // The first thing the `*` subscriber gets is the broadcast, not the dock's event.
    let first = message(&mut everything).await;
    assert_eq!(first["topic"], "t:a", "{first}");
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("cuebox_topic_deliveries_total 1\n"),
        "{metrics}"
    );
    app.stop().await;
}

#[actix_web::test]
async fn a_burst_of_commands_is_answered_whole() {
    // Sixty subscribes sent at once: each is answered, in order, and the connection stays.
    let app = app_with(&["t:*"], 100).await;
    let mut c = WidgetClient::connect(&ws(&app, "topics=t:a"))
        .await
        .unwrap();
    let burst: String = (0..60)
        .map(|i| format!(r#"{{"type":"subscribe","topic":"t:{i}"}}"#))
        .collect::<Vec<_>>()
        .join("\n");
    for line in burst.lines() {
        c.send_text(line).await;
    }
    for i in 0..60 {
        let v = c.next_json().await;
        assert_eq!(
            (&v["type"], &v["topic"]),
            (&json!("subscribed"), &json!(format!("t:{i}"))),
            "{v}"
        );
    }
    let (status, _) = broadcast(&app, json!({"topics": ["t:59"], "event": "e"})).await;
    assert_eq!(status, 202);
    assert_eq!(message(&mut c).await["topic"], "t:59");
    app.stop().await;
}
