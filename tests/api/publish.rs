//! The publish API as a platform's backend meets it: answers, idempotency, and every error.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[actix_web::test]
async fn a_valid_publish_is_accepted_with_its_id_and_position() {
    let app = TestApp::memory().await;
    let (status, body) = app
        .publish(json!({
            "receiver": "alice",
            "kind": "donation",
            "from": "Ana",
            "amount": { "value": "10.50", "currency": "BRL" },
            "message": "Olá!",
            "media": { "image": "https://example.com/a.gif", "sound": "http://example.com/a.mp3" },
            "duration_ms": 5000,
            "data": { "tier": 2 }
        }))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["receiver"], "alice");
    assert_eq!(body["position"], 0);
    assert_eq!(body["duplicate"], false);
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    let (_, second) = app.publish(json!({ "receiver": "alice" })).await;
    assert_eq!(second["position"], 1);
    assert_eq!(app.status("alice").await["queued"], 2);
}

#[actix_web::test]
async fn a_retried_publish_with_the_same_idempotency_key_is_a_duplicate() {
    let app = TestApp::memory().await;
    let body = json!({ "receiver": "alice", "idempotency_key": "payment-42" });
    let (status, first) = app.publish(body.clone()).await;
    assert_eq!(status, 202);
    let (status, again) = app.publish(body).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);

    // The header does the same.
    let res = app
        .http
        .post(format!("{}/publish", app.base))
        .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Idempotency-Key", "payment-42"))
        .send_body(json!({ "receiver": "alice" }).to_string())
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(app.status("alice").await["queued"], 1);
}

#[actix_web::test]
async fn each_bad_request_gets_a_clear_error() {
    let app = TestApp::memory().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({}), "missing_field", "receiver"),
        (json!({ "receiver": "a/b" }), "invalid_field", "receiver"),
        (
            json!({ "receiver": "a".repeat(65) }),
            "invalid_field",
            "receiver",
        ),
        (
            json!({ "receiver": "a", "extra": true }),
            "unknown_field",
            "extra",
        ),
        (
            json!({ "receiver": "a", "kind": "Donation" }),
            "invalid_field",
            "kind",
        ),
        (
            json!({ "receiver": "a", "from": "x".repeat(65) }),
            "invalid_field",
            "from",
        ),
        (
            json!({ "receiver": "a", "message": "x".repeat(501) }),
            "invalid_field",
            "message",
        ),
        (
            json!({ "receiver": "a", "amount": { "value": 10, "currency": "BRL" } }),
            "invalid_field",
            "amount.value",
        ),
        (
            json!({ "receiver": "a", "amount": { "value": "1", "currency": "brl" } }),
            "invalid_field",
            "amount.currency",
        ),
        (
            json!({ "receiver": "a", "media": { "image": "ftp://x/y.png" } }),
            "invalid_field",
            "media.image",
        ),
        (
            json!({ "receiver": "a", "media": { "sound": "http://@/x" } }),
            "invalid_field",
            "media.sound",
        ),
        (
            json!({ "receiver": "a", "duration_ms": 60001 }),
            "invalid_field",
            "duration_ms",
        ),
        (
            json!({ "receiver": "a", "data": { "big": "x".repeat(5000) } }),
            "invalid_field",
            "data",
        ),
        (
            json!({ "receiver": "a", "idempotency_key": "k".repeat(129) }),
            "invalid_field",
            "idempotency_key",
        ),
    ];
    for (body, code, field) in cases {
        let (status, answer) = app.publish(body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(error_code(&answer), code, "{body} -> {answer}");
        assert_eq!(answer["error"]["field"], field, "{body} -> {answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    for garbage in ["{", "[]", "null", "\"x\"", "\u{0}"] {
        let (status, answer) = app
            .post_raw("/publish", Some(PUBLISH_KEY), "application/json", garbage)
            .await;
        assert_eq!(status, 400, "{garbage:?}");
        assert_eq!(error_code(&answer), "invalid_json");
    }
    assert_eq!(
        app.status("a").await["queued"],
        0,
        "nothing was half-written"
    );
}

#[actix_web::test]
async fn publish_needs_a_valid_key() {
    let app = TestApp::memory().await;
    let body = json!({ "receiver": "a" }).to_string();
    for key in [None, Some("wrong"), Some("")] {
        let (status, answer) = app
            .post_raw("/publish", key, "application/json", body.clone())
            .await;
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(error_code(&answer), "unauthorized");
    }
    let (status, _) = app.get("/receivers/a", Some("wrong")).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn a_body_that_is_not_json_or_too_large_is_refused() {
    let app = TestApp::memory().await;
    let (status, answer) = app
        .post_raw("/publish", Some(PUBLISH_KEY), "text/plain", "{}")
        .await;
    assert_eq!(
        (status, error_code(&answer)),
        (415, "unsupported_media_type")
    );

    let big = json!({ "receiver": "a", "message": "x".repeat(70 * 1024) }).to_string();
    let (status, answer) = app
        .post_raw("/publish", Some(PUBLISH_KEY), "application/json", big)
        .await;
    assert_eq!((status, error_code(&answer)), (413, "payload_too_large"));
}

#[actix_web::test]
async fn a_full_queue_answers_429() {
    let mut args = serve_args(None);
    args.max_queue = 2;
    let app = TestApp::spawn(args).await;
    app.publish_alert("a", "1").await;
    app.publish_alert("a", "2").await;
    let (status, answer) = app.publish(json!({ "receiver": "a" })).await;
    assert_eq!((status, error_code(&answer)), (429, "queue_full"));
    assert_eq!(app.status("a").await["queued"], 2);
}

#[actix_web::test]
async fn unknown_routes_and_bad_receivers_answer_json() {
    let app = TestApp::memory().await;
    let (status, answer) = app.get("/nope", None).await;
    assert_eq!((status, error_code(&answer)), (404, "not_found"));
    let (status, answer) = app.get("/receivers/bad%20id", Some(PUBLISH_KEY)).await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_field"));
}

#[actix_web::test]
async fn while_redis_is_down_publish_answers_503_and_writes_nothing() {
    let mut redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    assert_eq!(app.get("/readyz", None).await.0, 200);
    app.publish_alert("alice", "before").await;

    // Once the node knows its connection is gone, nothing it is asked reaches Redis: that, and
    // only that, is `store_unavailable`.
    redis.kill();
    eventually(|| async { app.get("/readyz", None).await.0 == 503 }).await;
    let (status, answer) = app
        .publish(json!({ "receiver": "alice", "idempotency_key": "during" }))
        .await;
    assert_eq!((status, error_code(&answer)), (503, "store_unavailable"));
    assert_eq!(app.get("/healthz", None).await.0, 200);

    // An empty Redis comes back (no persistence here): the node carries on without a restart,
    // and the refused publish left no idempotency key behind.
    redis.restart().await;
    eventually(|| async { app.get("/readyz", None).await.0 == 200 }).await;
    let (status, answer) = app
        .publish(json!({ "receiver": "alice", "idempotency_key": "during" }))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["duplicate"], false);
}

#[actix_web::test]
async fn a_key_over_its_publish_rate_gets_429_with_retry_after() {
    let mut args = serve_args(None);
    args.publish_rate = 2;
    args.publish_keys = vec![PUBLISH_KEY.into(), "second-key".into()];
    let app = TestApp::spawn(args).await;
    let body = json!({ "receiver": "alice" }).to_string();
    // The burst: one second's worth.
    for _ in 0..2 {
        let (status, _) = app
            .post_raw(
                "/publish",
                Some(PUBLISH_KEY),
                "application/json",
                body.clone(),
            )
            .await;
        assert_eq!(status, 202);
    }
    let res = app
        .http
        .post(format!("{}/publish", app.base))
        .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.clone())
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap());
    assert_eq!(
        retry,
        Some("1"),
        "half a second to the next token, rounded up"
    );
    let (status, _) = app
        .post_raw("/publish", Some("second-key"), "application/json", body)
        .await;
    assert_eq!(status, 202, "each key has its own rate");
    assert_eq!(
        app.status("alice").await["queued"],
        3,
        "the refused one queued nothing"
    );
}

/// Publishes and returns the status, the body and the `Retry-After` header.
async fn publish_with_key(app: &TestApp, key: Option<&str>, body: Value) -> (u16, Value, String) {
    let mut req = app
        .http
        .post(format!("{}/publish", app.base))
        .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
        .insert_header(("Content-Type", "application/json"));
    if let Some(key) = key {
        req = req.insert_header(("Idempotency-Key", key));
    }
    let mut res = req.send_body(body.to_string()).await.expect("an answer");
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.body().await.expect("a body");
    (
        res.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        retry_after,
    )
}

#[actix_web::test]
async fn a_publish_redis_never_answered_is_outcome_unknown_and_its_retry_is_a_duplicate() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    app.publish_alert("alice", "before").await;

    // Redis stalls: the calls are written to its socket, and it runs them once it resumes.
    redis.pause();
    let keyed = json!({ "receiver": "alice", "message": "keyed" });
    let (status, answer, retry_after) = publish_with_key(&app, Some("pay-7"), keyed.clone()).await;
    let unkeyed = json!({ "receiver": "alice", "message": "unkeyed" });
    let (status2, answer2, _) = publish_with_key(&app, None, unkeyed).await;
    redis.resume();

    assert_eq!(
        (status, error_code(&answer)),
        (503, "outcome_unknown"),
        "{answer}"
    );
    assert_eq!(retry_after, "1");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("may have been queued"), "{message}");
    assert!(message.contains("Idempotency-Key"), "{message}");
    assert_eq!((status2, error_code(&answer2)), (503, "outcome_unknown"));

    // Both were queued after all, which is why neither answer could say "nothing was taken".
    eventually(|| async { app.status("alice").await["queued"] == 3 }).await;
    // The platform's retry with the same key is a duplicate, not a second alert.
    let (status, again, _) = publish_with_key(&app, Some("pay-7"), keyed).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(app.status("alice").await["queued"], 3);

    let mut w = app.widget("alice").await;
    for expected in ["before", "keyed", "unkeyed"] {
        let (id, attempt, alert) = w.next_alert().await;
        assert_eq!((alert["message"].as_str(), attempt), (Some(expected), 1));
        if expected == "keyed" {
            assert_eq!(again["id"].as_str(), Some(id.as_str()));
        }
        w.show(&id).await;
    }
    w.expect_silence(Duration::from_millis(300)).await;
}

/// Clients that send a publish's headers, then its body a byte every half second: each is
/// answered 408 and its socket closed once the body timeout (10 s by default) has passed.
async fn a_body_that_never_ends_is_answered_408_and_its_socket_closed(redis_url: Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn(serve_args(redis_url)).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: cuebox\r\nAuthorization: Bearer {PUBLISH_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{"
    );
    let clients = (0..20).map(|_| {
        let (addr, head) = (addr.clone(), head.clone());
        tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connects");
            let (mut reader, mut writer) = stream.into_split();
            writer.write_all(head.as_bytes()).await.expect("writes");
            let trickle = tokio::spawn(async move {
                // Bounded: far past the timeout, or until the node stops reading.
                for _ in 0..60 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if writer.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            });
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answer))
                    .await;
            trickle.abort();
            (read.is_ok(), String::from_utf8_lossy(&answer).into_owned())
        })
    });
    for client in futures_util::future::join_all(clients).await {
        let (closed, answer) = client.expect("the client ran");
        assert!(closed, "the socket was held past 20 s: {answer:?}");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    }
    // Nothing was queued by any of them, and the node serves on.
    assert_eq!(app.status("alice").await["queued"], 0);
    app.publish_alert("alice", "after").await;
}

crate::on_both_stores!(a_body_that_never_ends_is_answered_408_and_its_socket_closed);

/// Load balancers probe with HEAD: the same status as GET, with no body.
async fn health_checks_answer_head_like_get(redis: Option<RedisServer>) {
    let app = TestApp::spawn(serve_args(redis.as_ref().map(RedisServer::url))).await;
    for path in ["/healthz", "/readyz"] {
        let answer = raw_http(
            &app,
            format!("HEAD {path} HTTP/1.1\r\nHost: cuebox\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(
            answer.ends_with("\r\n\r\n"),
            "{path} has no body: {answer:?}"
        );
    }
    if let Some(mut redis) = redis {
        redis.kill();
        eventually(|| async { app.get("/readyz", None).await.0 == 503 }).await;
        let answer = raw_http(
            &app,
            b"HEAD /readyz HTTP/1.1\r\nHost: cuebox\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n"), "{answer:?}");
    }
}

#[actix_web::test]
async fn health_checks_answer_head_like_get_on_the_embedded_store() {
    health_checks_answer_head_like_get(None).await;
}

#[actix_web::test]
async fn health_checks_answer_head_like_get_on_redis() {
    health_checks_answer_head_like_get(Some(RedisServer::spawn().await)).await;
}
