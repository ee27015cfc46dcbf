//! Alerts added to the `{prefix}:ingest` Redis stream: validated and deduplicated like HTTP
//! publishes, refused entries dead-lettered with their reason, a dead node's entries claimed.

use std::time::Duration;

use redis::Value;
use serde_json::json;

use crate::helpers::*;

async fn xadd(redis: &RedisServer, alert: &str) -> String {
    match redis
        .cmd(&["XADD", "cuebox:ingest", "*", "alert", alert])
        .await
    {
        Value::BulkString(id) => String::from_utf8(id).unwrap(),
        other => panic!("{other:?}"),
    }
}

async fn pending(redis: &RedisServer) -> i64 {
    match redis.cmd(&["XPENDING", "cuebox:ingest", "cuebox"]).await {
        Value::Array(summary) => match summary.first() {
            Some(Value::Int(n)) => *n,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[actix_web::test]
async fn stream_entries_are_shown_like_published_alerts_and_bad_ones_dead_lettered() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let mut w = app.widget("alice").await;
    let (status, _) = app
        .publish(json!({ "receiver": "alice", "message": "by http", "idempotency_key": "pay-1" }))
        .await;
    assert_eq!(status, 202);

    xadd(
        &redis,
        r#"{"receiver":"alice","message":"from the stream"}"#,
    )
    .await;
    xadd(&redis, "{not json").await;
    xadd(&redis, r#"{"receiver":"alice","duration_ms":5}"#).await;
    xadd(
        &redis,
        r#"{"receiver":"alice","message":"retried","idempotency_key":"pay-1"}"#,
    )
    .await;
    redis
        .cmd(&["XADD", "cuebox:ingest", "*", "other", "field"])
        .await;
    xadd(
        &redis,
        r#"{"receiver":"alice","message":"second from the stream"}"#,
    )
    .await;

    for expected in ["by http", "from the stream", "second from the stream"] {
        let (id, _, alert) = w.next_alert().await;
        assert_eq!(alert["message"], expected);
        w.show(&id).await;
    }
    w.expect_silence(Duration::from_millis(300)).await;

    eventually(|| async { pending(&redis).await == 0 }).await;
    let dead = redis.cmd(&["XRANGE", "cuebox:ingest:dead", "-", "+"]).await;
    let text = format!("{dead:?}");
    let Value::Array(entries) = dead else {
        panic!("{text}")
    };
    assert_eq!(entries.len(), 3, "{text}");
    for reason in ["invalid_json", "duration_ms", "missing_field"] {
        assert!(text.contains(reason), "{reason} in {text}");
    }
}

#[actix_web::test]
async fn entries_a_dead_node_held_are_claimed_and_never_doubled() {
    let redis = RedisServer::spawn().await;
    redis
        .cmd(&[
            "XGROUP",
            "CREATE",
            "cuebox:ingest",
            "cuebox",
            "0",
            "MKSTREAM",
        ])
        .await;
    // A node read two entries and died: the first it never queued, the second it queued (under
    // the entry's own key) but never acknowledged.
    xadd(&redis, r#"{"receiver":"alice","message":"never queued"}"#).await;
    let queued = xadd(
        &redis,
        r#"{"receiver":"alice","message":"queued, not acked"}"#,
    )
    .await;
    redis
        .cmd(&[
            "XREADGROUP",
            "GROUP",
            "cuebox",
            "dead-node",
            "COUNT",
            "2",
            "STREAMS",
            "cuebox:ingest",
            ">",
        ])
        .await;

    let mut args = serve_args(Some(redis.url()));
    args.ingest_claim_idle_ms = 200;
    let app = TestApp::spawn(args).await;
    let (status, _) = app
        .publish(json!({
            "receiver": "alice", "message": "queued, not acked",
            "idempotency_key": format!("ingest:{queued}")
        }))
        .await;
    assert_eq!(status, 202);

    let mut w = app.widget("alice").await;
    let mut shown = Vec::new();
    for _ in 0..2 {
        let (id, _, alert) = w.next_alert().await;
        shown.push(alert["message"].as_str().unwrap().to_owned());
        w.show(&id).await;
    }
    shown.sort();
    assert_eq!(shown, ["never queued", "queued, not acked"]);
    w.expect_silence(Duration::from_millis(500)).await;
    eventually(|| async { pending(&redis).await == 0 }).await;
}

#[actix_web::test]
async fn ingest_goes_on_after_redis_restarts_without_the_stream() {
    let mut redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    xadd(&redis, r#"{"receiver":"alice","message":"before"}"#).await;
    eventually(|| async { app.status("alice").await["queued"] == 1 }).await;

    // Empty, with neither the stream nor its group: the node makes them again and reads on.
    redis.restart().await;
    eventually(|| async { app.get("/readyz", None).await.0 == 200 }).await;
    xadd(&redis, r#"{"receiver":"alice","message":"after"}"#).await;
    eventually_within(Duration::from_secs(5), || async {
        app.status("alice").await["queued"] == 1
    })
    .await;
    eventually(|| async { pending(&redis).await == 0 }).await;
}

#[actix_web::test]
async fn on_a_cluster_ingest_goes_on_after_the_stream_loses_its_group() {
    let cluster = RedisCluster::spawn().await;
    let mut args = serve_args(Some(cluster.seeds()));
    args.redis.cluster = true;
    let app = TestApp::spawn(args).await;
    let target = cuebox::store::redis::connection::Target::new(&cluster.seeds(), true);
    let mut con = target.connect(None).await.expect("connects to the cluster");
    let add = |message: &str| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("cuebox:ingest")
            .arg("*")
            .arg("alert")
            .arg(json!({ "receiver": "alice", "message": message }).to_string());
        cmd
    };
    let _: String = add("before").query_async(&mut con).await.unwrap();
    eventually(|| async { app.status("alice").await["queued"] == 1 }).await;

    // The stream is made again without the group, as on a replica that never had it.
    let _: i64 = redis::cmd("DEL")
        .arg("cuebox:ingest")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = add("after").query_async(&mut con).await.unwrap();
    eventually_within(Duration::from_secs(5), || async {
        app.status("alice").await["queued"] == 2
    })
    .await;
}

#[actix_web::test]
async fn ingest_keeps_its_order_and_doubles_nothing_across_a_redis_stall() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let total = 200;
    let mut pipe = redis::pipe();
    for i in 0..total {
        let alert = json!({ "receiver": "alice", "message": format!("entry {i}") });
        pipe.cmd("XADD")
            .arg("cuebox:ingest")
            .arg("*")
            .arg("alert")
            .arg(alert.to_string())
            .ignore();
    }
    let () = pipe.query_async(&mut con).await.unwrap();
    // Stalled while the node works through the entries: its calls time out unanswered, and
    // Redis runs them once it resumes.
    redis.pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.resume();

    let mut w = app.widget("alice").await;
    for i in 0..total {
        let (id, attempt, alert) = w.next_alert().await;
        assert_eq!(alert["message"], format!("entry {i}"));
        assert_eq!(attempt, 1);
        w.show(&id).await;
    }
    w.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(app.status("alice").await["queued"], 0);
    eventually(|| async { pending(&redis).await == 0 }).await;
}
