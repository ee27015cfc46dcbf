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
