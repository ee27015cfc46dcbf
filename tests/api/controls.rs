//! The streamer's controls over HTTP: who may use them, and what each does to real widgets,
//! on either store and across nodes.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn controls_take_a_publish_key_or_the_receivers_dashboard_token_only() {
    let app = TestApp::memory().await;
    let dashboard = app.dashboard_token("alice");
    let refused = [
        app.post_raw("/receivers/alice/pause", None, "application/json", "")
            .await,
        // The widget token is shown on stream: it controls nothing.
        app.control("/receivers/alice/pause", Some(&app.token("alice")))
            .await,
        app.control("/receivers/alice/pause", Some(&app.dashboard_token("bob")))
            .await,
        app.post_raw(
            "/receivers/alice/pause",
            Some("not-a-key"),
            "application/json",
            "",
        )
        .await,
    ];
    for (status, body) in refused {
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    assert_eq!(app.status("alice").await["paused"], false);

    let (status, body) = app
        .control("/receivers/alice/pause", Some(&dashboard))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true, "{body}");
    assert_eq!(body["receiver"], "alice");
    // The token in the header works the same, and so does the publish key.
    let (status, body) = app
        .post_raw(
            "/receivers/alice/resume",
            Some(&dashboard),
            "application/json",
            "",
        )
        .await;
    assert_eq!((status, &body["paused"]), (200, &json!(false)), "{body}");
    let (status, body) = app.control("/receivers/alice/pause", None).await;
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");
    let (status, body) = app
        .get(&format!("/receivers/alice?token={dashboard}"), None)
        .await;
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");
}

#[actix_web::test]
async fn a_pause_holds_the_queue_and_lets_the_alert_on_screen_finish() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let a1 = app.publish_alert("alice", "one").await;
    assert_eq!(w.next_alert().await.0, a1);
    let (status, body) = app.control("/receivers/alice/pause", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["in_flight"]["id"], a1.as_str(), "{body}");
    let a2 = app.publish_alert("alice", "two").await;
    w.show(&a1).await;
    w.expect_silence(Duration::from_millis(400)).await;
    assert_eq!(app.status("alice").await["queued"], 1);

    let (status, body) = app.control("/receivers/alice/resume", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], false);
    assert_eq!(body["in_flight"]["id"], a2.as_str(), "{body}");
    assert_eq!(w.next_alert().await.0, a2);
}

#[actix_web::test]
async fn a_skip_stops_the_alert_on_every_widget_of_every_node_and_sends_the_next() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut on_a = a.widget("alice").await;
    let mut on_b = b.widget("alice").await;
    a.wait_for_widgets("alice", 2).await;
    let a1 = a.publish_alert("alice", "one").await;
    let a2 = a.publish_alert("alice", "two").await;
    for w in [&mut on_a, &mut on_b] {
        assert_eq!(w.next_alert().await.0, a1);
        w.started(&a1).await;
    }
    // Skipped from the node neither widget's alert was published on... and from the other.
    let (status, body) = b
        .control(
            &format!("/receivers/alice/skip?id={a1}"),
            Some(&b.dashboard_token("alice")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["skipped"], a1.as_str(), "{body}");
    assert_eq!(body["in_flight"]["id"], a2.as_str(), "{body}");
    for w in [&mut on_a, &mut on_b] {
        let skip = w.next_json().await;
        assert_eq!(skip, json!({"type": "skip", "id": a1}));
        assert_eq!(w.next_alert().await.0, a2);
    }
    // A skip that names an alert no longer in flight skips nothing.
    let (status, body) = a
        .control(&format!("/receivers/alice/skip?id={a1}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("skipped").is_none(), "{body}");
    assert_eq!(body["in_flight"]["id"], a2.as_str());
    on_a.expect_silence(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn a_pause_survives_a_restart_of_the_embedded_node() {
    let dir = DataDir::fresh();
    let app = TestApp::embedded_in(&dir).await;
    app.publish_alert("alice", "waiting").await;
    let (status, _) = app.control("/receivers/alice/pause", None).await;
    assert_eq!(status, 200);
    // And a receiver with nothing but its pause.
    let (status, _) = app.control("/receivers/bob/pause", None).await;
    assert_eq!(status, 200);
    app.stop().await;

    let app = TestApp::embedded_in(&dir).await;
    assert_eq!(app.status("alice").await["paused"], true);
    assert_eq!(app.status("bob").await["paused"], true);
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    w.expect_silence(Duration::from_millis(300)).await;
    app.control("/receivers/alice/resume", None).await;
    assert_eq!(w.next_alert().await.2["message"], "waiting");
    app.stop().await;
}

#[actix_web::test]
async fn a_pause_survives_restarts_of_the_node_and_of_a_persistent_redis() {
    let mut redis = RedisServer::spawn_with(&["--appendonly", "yes"]).await;
    let app = TestApp::redis(&redis).await;
    app.publish_alert("alice", "waiting").await;
    app.control("/receivers/alice/pause", None).await;
    app.stop().await;
    redis.restart().await;

    let app = TestApp::redis(&redis).await;
    assert_eq!(app.status("alice").await["paused"], true);
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    w.expect_silence(Duration::from_millis(300)).await;
    app.control("/receivers/alice/resume", None).await;
    assert_eq!(w.next_alert().await.2["message"], "waiting");
}

#[actix_web::test]
async fn high_priority_alerts_jump_the_queue_but_not_the_alert_on_screen() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let first = app.publish_alert("alice", "on screen").await;
    let normal = app.publish_alert("alice", "normal").await;
    let (status, body) = app
        .publish(json!({"receiver": "alice", "message": "urgent", "priority": "high"}))
        .await;
    assert_eq!((status, &body["position"]), (202, &json!(1)), "{body}");
    let urgent = body["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .publish(json!({"receiver": "alice", "message": "x", "priority": "urgent"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "priority");

    let (id, _, alert) = w.next_alert().await;
    assert_eq!(
        (id.as_str(), &alert["priority"]),
        (first.as_str(), &json!("normal"))
    );
    w.show(&first).await;
    let (id, _, alert) = w.next_alert().await;
    assert_eq!(
        (id.as_str(), &alert["priority"]),
        (urgent.as_str(), &json!("high"))
    );
    w.show(&urgent).await;
    assert_eq!(w.next_alert().await.0, normal);
}

#[actix_web::test]
async fn clearing_ten_thousand_alerts_goes_in_chunks_and_leaves_the_alert_on_screen() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let on_screen = app.publish_alert("alice", "on screen").await;
    assert_eq!(w.next_alert().await.0, on_screen);
    // Queued straight through a store of the test's own: 10,000 HTTP publishes would be slow.
    let s = make_store(&Backing::Redis(redis.url()), fast_rules(), "filler").await;
    for chunk in 0..20 {
        let alerts: Vec<_> = (0..500)
            .map(|i| record("alice", &format!("waiting {}", chunk * 500 + i)))
            .collect();
        let published =
            futures_util::future::join_all(alerts.iter().map(|a| s.store.publish(a, None))).await;
        assert!(published.iter().all(Result::is_ok));
    }
    assert_eq!(app.status("alice").await["queued"], 10_000);

    let (status, body) = app
        .http
        .delete(format!(
            "{}/receivers/alice/queue?token={}",
            app.base,
            app.dashboard_token("alice")
        ))
        .send()
        .await
        .map(|mut res| async move {
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().limit(1 << 20).await.unwrap();
            (status, body)
        })
        .unwrap()
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cleared"], 10_000, "{body}");
    assert_eq!(body["queued"], 0, "{body}");
    assert_eq!(body["in_flight"]["id"], on_screen.as_str(), "{body}");
    // Twenty calls of 500, each one atomic step of the receiver: Redis is never held for all.
    let (_, metrics) = app.get_text("/metrics").await;
    let calls = metrics
        .lines()
        .find(|l| l.starts_with("cuebox_store_call_duration_seconds_count{op=\"clear\"}"))
        .unwrap_or_else(|| panic!("no clear calls counted:\n{metrics}"));
    assert!(calls.ends_with(" 20"), "{calls}");
    // The alert on screen finishes, and nothing follows it.
    w.show(&on_screen).await;
    w.expect_silence(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn the_test_button_queues_a_test_alert_and_the_queue_lists_what_waits() {
    let app = TestApp::memory().await;
    let token = app.dashboard_token("alice");
    let first = app.publish_alert("alice", "first").await;
    let (status, body) = app.control("/receivers/alice/test", Some(&token)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (&body["position"], &body["queued"]),
        (&json!(1), &json!(2)),
        "{body}"
    );
    let test_id = body["id"].as_str().unwrap().to_owned();

    let (status, body) = app
        .get(&format!("/receivers/alice/queue?token={token}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 2);
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts[0]["id"], first.as_str());
    assert_eq!(
        (&alerts[1]["id"], &alerts[1]["kind"]),
        (&json!(test_id), &json!("test"))
    );
    let (_, page) = app
        .get("/receivers/alice/queue?limit=1&offset=1", Some(PUBLISH_KEY))
        .await;
    assert_eq!(page["alerts"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["alerts"][0]["id"], test_id.as_str());
    for bad in ["limit=0", "limit=501", "limit=x", "offset=-1"] {
        let (status, body) = app
            .get(&format!("/receivers/alice/queue?{bad}"), Some(PUBLISH_KEY))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = app
        .get(
            &format!("/receivers/alice/queue?token={}", app.token("alice")),
            None,
        )
        .await;
    assert_eq!(status, 401, "the widget token lists nothing");

    let mut w = app.widget("alice").await;
    assert_eq!(w.next_alert().await.0, first);
    w.show(&first).await;
    let (id, _, alert) = w.next_alert().await;
    assert_eq!((id, &alert["kind"]), (test_id, &json!("test")));
}

async fn put_settings(
    app: &TestApp,
    receiver: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    app.put_settings(receiver, body).await
}

#[actix_web::test]
async fn moderation_filters_masks_and_strips_before_anything_is_queued() {
    let dir = DataDir::fresh();
    let app = TestApp::embedded_in(&dir).await;
    let (status, body) = app
        .get("/receivers/alice/settings", Some(PUBLISH_KEY))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["strip_links"], true,
        "links are stripped by default: {body}"
    );
    for (bad, field) in [
        (json!({"min_amount": {"BRL": "five"}}), "min_amount"),
        (
            json!({"blocked_words": ["ok"], "blocked_mode": "shout"}),
            serde_json::Value::Null.to_string().as_str(),
        ),
        (json!({"paused": true}), "paused"),
    ] {
        let (status, body) = put_settings(&app, "alice", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        if field != "null" {
            assert_eq!(body["error"]["field"], field, "{body}");
        }
    }
    let settings = json!({
        "min_amount": {"BRL": "5.00"},
        "blocked_words": ["idiot"],
        "blocked_mode": "mask",
    });
    let (status, body) = put_settings(&app, "alice", settings).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = app
        .publish(
            json!({"receiver": "alice", "from": "Ana", "message": "tiny",
                        "amount": {"value": "4.99", "currency": "BRL"}}),
        )
        .await;
    assert_eq!(
        (status, &body["filtered"]),
        (202, &json!("min_amount")),
        "{body}"
    );
    assert_eq!(
        app.status("alice").await["queued"],
        0,
        "a filtered alert is never queued"
    );

    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let (status, body) = app
        .publish(json!({"receiver": "alice", "from": "Bia www.phish.example",
                        "message": "you 1D1OT, claim at https://phish.example/login now",
                        "amount": {"value": "5.00", "currency": "BRL"}}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.get("filtered").is_none(), "{body}");
    let (_, _, alert) = w.next_alert().await;
    assert_eq!(alert["from"], "Bia");
    assert_eq!(alert["message"], "you ***, claim at now");

    // Kept by the store: the same after a restart.
    w.close().await;
    app.stop().await;
    let app = TestApp::embedded_in(&dir).await;
    let (_, body) = app
        .get("/receivers/alice/settings", Some(PUBLISH_KEY))
        .await;
    assert_eq!(body["blocked_words"], json!(["idiot"]), "{body}");
    let (status, body) = put_settings(
        &app,
        "alice",
        json!({"blocked_words": ["spam"], "blocked_mode": "drop"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .publish(json!({"receiver": "alice", "message": "buy Sp4m"}))
        .await;
    assert_eq!(
        (status, &body["filtered"]),
        (202, &json!("blocked_words")),
        "{body}"
    );
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("cuebox_alerts_total{outcome=\"filtered\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("filtered"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.stop().await;
}

#[actix_web::test]
async fn settings_put_on_one_node_apply_on_another() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    // b reads the defaults first, and holds them for a moment.
    let (_, body) = b.get("/receivers/alice/settings", Some(PUBLISH_KEY)).await;
    assert_eq!(body["blocked_words"], json!([]));
    let (status, _) = put_settings(
        &a,
        "alice",
        json!({"blocked_words": ["secret"], "blocked_mode": "drop"}),
    )
    .await;
    assert_eq!(status, 200);
    eventually_within(Duration::from_secs(5), || async {
        let (_, body) = b
            .publish(json!({"receiver": "alice", "message": "the SECRET word"}))
            .await;
        body["filtered"] == "blocked_words"
    })
    .await;
}

/// The token in a URL that `rotate` or `widget-url` answered.
fn token_of(url: &str) -> String {
    url.split_once("?token=")
        .expect("a token in the URL")
        .1
        .to_owned()
}

#[actix_web::test]
async fn rotating_the_widget_token_closes_old_widgets_on_every_node_and_refuses_the_old_url() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut on_a = a.widget("alice").await;
    let mut on_b = b.widget("alice").await;
    a.wait_for_widgets("alice", 2).await;
    let old = a.token("alice");

    let (status, body) = a
        .control(
            "/receivers/alice/tokens/rotate",
            Some(&a.dashboard_token("alice")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["which"], &body["generation"]),
        (&json!("widget"), &json!(1)),
        "{body}"
    );
    let url = body["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/widget/alice?token=", a.base)),
        "{url}"
    );
    let new = token_of(url);
    assert_ne!(new, old);
    for w in [&mut on_a, &mut on_b] {
        match w.next_within(PROMPTLY).await {
            Some(Incoming::Closed(Some(4001))) => {}
            other => panic!("expected a close with 4001, got {other:?}"),
        }
    }
    for node in [&a, &b] {
        let ws = node.base.replace("http://", "ws://");
        let refused = WidgetClient::connect(&format!("{ws}/ws/alice?token={old}")).await;
        assert!(refused.is_err(), "the old token still opens a socket");
        let (status, _) = node.get(&format!("/widget/alice?token={old}"), None).await;
        assert_eq!(status, 401);
        let (status, _) = node.get(&format!("/widget/alice?token={new}"), None).await;
        assert_eq!(status, 200);
        let mut w = WidgetClient::connect(&format!("{ws}/ws/alice?token={new}"))
            .await
            .expect("the new token opens");
        assert_eq!(w.next_json().await["type"], "hello");
    }
}

#[actix_web::test]
async fn a_rotated_dashboard_token_is_kept_across_a_restart_and_printed_by_dock_url() {
    let dir = DataDir::fresh();
    let app = TestApp::embedded_in(&dir).await;
    let old = app.dashboard_token("alice");
    let (status, body) = app
        .control("/receivers/alice/tokens/rotate?which=dashboard", Some(&old))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["url"].as_str().unwrap().contains("/dock/alice?token="),
        "{body}"
    );
    let new = token_of(body["url"].as_str().unwrap());
    let (status, _) = app.control("/receivers/alice/pause", Some(&old)).await;
    assert_eq!(status, 401, "the old dashboard token controls nothing");
    let (status, _) = app.control("/receivers/alice/pause", Some(&new)).await;
    assert_eq!(status, 200);
    // The widget token did not change.
    let (status, _) = app
        .get(&format!("/widget/alice?token={}", app.token("alice")), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .control("/receivers/alice/tokens/rotate?which=both", Some(&new))
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("which")),
        "{body}"
    );
    app.stop().await;

    // The CLI reads the generation from the data dir, with the node stopped or running.
    let printed = cuebox()
        .args([
            "dock-url",
            "alice",
            "--secret",
            SECRET,
            "--base-url",
            "http://example.test",
        ])
        .arg("--data-dir")
        .arg(&dir.0)
        .output()
        .await
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(
        printed.trim(),
        format!("http://example.test/dock/alice?token={new}")
    );
    let app = TestApp::embedded_in(&dir).await;
    let (status, _) = app.control("/receivers/alice/resume", Some(&new)).await;
    assert_eq!(status, 200, "the rotation outlived the restart");
    let (status, _) = app.control("/receivers/alice/resume", Some(&old)).await;
    assert_eq!(status, 401);
    app.stop().await;
}

#[actix_web::test]
async fn history_shows_how_each_alert_ended_and_a_replay_goes_out_next_from_any_node() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let mut w = a.widget("alice").await;
    a.wait_for_widgets("alice", 1).await;
    let shown = a.publish_alert("alice", "shown").await;
    assert_eq!(w.next_alert().await.0, shown);
    w.show(&shown).await;
    let skipped = b.publish_alert("alice", "skipped").await;
    assert_eq!(w.next_alert().await.0, skipped);
    let (status, body) = b.control("/receivers/alice/skip", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.next_json().await["type"], "skip");
    let (status, _) = put_settings(&b, "alice", json!({"min_amount": {"BRL": "5.00"}})).await;
    assert_eq!(status, 200);
    let (status, body) = b
        .publish(json!({"receiver": "alice", "amount": {"value": "1.00", "currency": "BRL"}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let filtered = body["id"].as_str().unwrap().to_owned();

    // Read on the other node, with the dashboard token: newest first.
    let token = a.dashboard_token("alice");
    let (status, body) = a
        .get(&format!("/receivers/alice/history?token={token}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let history = body["history"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = history
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            (filtered.as_str(), "filtered"),
            (skipped.as_str(), "skipped"),
            (shown.as_str(), "done")
        ]
    );
    assert_eq!(
        trail_of(&history[2]),
        ["received", "sent", "started", "done"]
    );
    assert_eq!(history[2]["trail"][1]["attempt"], 1);
    assert!(history[2]["trail"][0]["at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(history[2]["alert"]["message"], "shown");
    assert_eq!(body["next"], json!(null));

    // Pages: `next` is the `before` of the following one.
    let (_, page) = a
        .get("/receivers/alice/history?limit=2", Some(PUBLISH_KEY))
        .await;
    assert_eq!(page["next"], skipped.as_str(), "{page}");
    let (_, rest) = a
        .get(
            &format!("/receivers/alice/history?limit=2&before={skipped}"),
            Some(PUBLISH_KEY),
        )
        .await;
    assert_eq!(rest["history"][0]["id"], shown.as_str(), "{rest}");
    assert_eq!(rest["next"], json!(null));
    for bad in ["limit=0", "limit=501", "limit=x"] {
        let (status, body) = a
            .get(
                &format!("/receivers/alice/history?{bad}"),
                Some(PUBLISH_KEY),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = a
        .get("/receivers/alice/history", Some(&a.token("alice")))
        .await;
    assert_eq!(status, 401, "a widget token reads no history");

    // Replay from node B while a widget on node A shows something else: it goes out next.
    let waiting = a.publish_alert("alice", "waiting").await;
    assert_eq!(w.next_alert().await.0, waiting);
    let later = a.publish_alert("alice", "later").await;
    let (status, body) = b
        .control(&format!("/receivers/alice/replay/{shown}"), Some(&token))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["replay_of"].as_str(), body["position"].as_u64()),
        (Some(shown.as_str()), Some(1))
    );
    let replay = body["id"].as_str().unwrap().to_owned();
    assert_ne!(replay, shown);
    w.show(&waiting).await;
    let (id, _, alert) = w.next_alert().await;
    assert_eq!(id, replay);
    assert_eq!(
        (&alert["replay_of"], &alert["message"]),
        (&json!(shown), &json!("shown"))
    );
    w.show(&replay).await;
    assert_eq!(w.next_alert().await.0, later);

    let (status, body) = b
        .control("/receivers/alice/replay/not-an-alert", None)
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_in_history")),
        "{body}"
    );
}

#[actix_web::test]
async fn history_and_cleared_alerts_survive_a_restart_of_the_embedded_node() {
    let dir = DataDir::fresh();
    let app = TestApp::embedded_in(&dir).await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let a1 = app.publish_alert("alice", "one").await;
    assert_eq!(w.next_alert().await.0, a1);
    let a2 = app.publish_alert("alice", "two").await;
    let (status, body) = app.clear("alice").await;
    assert_eq!(status, 200);
    assert_eq!(body["cleared"], 1);
    w.show(&a1).await;
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;
    drop(w);
    app.stop().await;

    let app = TestApp::embedded_in(&dir).await;
    let (_, body) = app.get("/receivers/alice/history", Some(PUBLISH_KEY)).await;
    let seen: Vec<(&str, &str)> = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [(a1.as_str(), "done"), (a2.as_str(), "cleared")]);
    assert_eq!(trail_of(&body["history"][1]), ["received", "cleared"]);
    app.stop().await;
}

#[actix_web::test]
async fn held_alerts_wait_for_approval_on_any_node_and_denied_ones_are_never_shown() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    let (status, body) = put_settings(&a, "alice", json!({"hold_for_approval": true})).await;
    assert_eq!(
        (status, &body["hold_for_approval"]),
        (200, &json!(true)),
        "{body}"
    );
    let mut w = a.widget("alice").await;
    a.wait_for_widgets("alice", 1).await;
    // Held on the node that took the settings, and on the other (which reads them afresh).
    let mut ids = Vec::new();
    for (node, message) in [(&a, "first"), (&b, "second")] {
        let (status, body) = node
            .publish(json!({"receiver": "alice", "message": message}))
            .await;
        assert_eq!((status, &body["held"]), (202, &json!(true)), "{body}");
        assert_eq!(body["position"], json!(null));
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let [first, second] = [ids[0].clone(), ids[1].clone()];
    w.expect_silence(Duration::from_millis(300)).await;
    let (_, queue) = b.get("/receivers/alice/queue", Some(PUBLISH_KEY)).await;
    let held: Vec<&str> = queue["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(held, [first.as_str(), second.as_str()], "{queue}");
    assert_eq!(
        (
            queue["total"].as_u64(),
            b.status("alice").await["held"].as_u64()
        ),
        (Some(0), Some(2))
    );

    // Denied on node B: never shown. Approved on node B: shown on node A's widget.
    let token = b.dashboard_token("alice");
    let (status, body) = b
        .control(&format!("/receivers/alice/deny/{first}"), Some(&token))
        .await;
    assert_eq!((status, &body["denied"]), (200, &json!(first)), "{body}");
    let (status, body) = b
        .control(&format!("/receivers/alice/approve/{second}"), Some(&token))
        .await;
    assert_eq!((status, &body["approved"]), (200, &json!(second)), "{body}");
    assert_eq!(w.next_alert().await.0, second);
    let (status, body) = b
        .control(&format!("/receivers/alice/approve/{first}"), None)
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_held")),
        "{body}"
    );
    w.show(&second).await;
    eventually(|| async { a.status("alice").await["in_flight"].is_null() }).await;
    let (_, body) = a.get("/receivers/alice/history", Some(PUBLISH_KEY)).await;
    let statuses: Vec<(&str, &str)> = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [(second.as_str(), "done"), (first.as_str(), "denied")]
    );
    assert_eq!(
        trail_of(&body["history"][0]),
        ["received", "held", "approved", "sent", "started", "done"]
    );
}

#[actix_web::test]
async fn a_held_alert_approves_itself_and_stays_held_across_a_restart_until_then() {
    let dir = DataDir::fresh();
    let app = TestApp::embedded_in(&dir).await;
    let settings = json!({"hold_for_approval": true, "auto_approve_after_ms": 1500});
    assert_eq!(put_settings(&app, "alice", settings).await.0, 200);
    let (status, body) = put_settings(&app, "alice", json!({"auto_approve_after_ms": 0})).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("auto_approve_after_ms")),
        "{body}"
    );
    let (_, body) = app
        .publish(json!({"receiver": "alice", "message": "auto"}))
        .await;
    let id = body["id"].as_str().unwrap().to_owned();
    app.stop().await;

    let app = TestApp::embedded_in(&dir).await;
    assert_eq!(
        app.status("alice").await["held"],
        1,
        "still held after a restart"
    );
    let mut w = app.widget("alice").await;
    w.expect_silence(Duration::from_millis(200)).await;
    // Its time comes with nothing else happening: this node did not publish it, and learnt when
    // to wake the receiver from the widget's join.
    let (got, _, _) = w.next_alert().await;
    assert_eq!(got, id);
    let (_, body) = app.get("/receivers/alice/queue", Some(PUBLISH_KEY)).await;
    assert_eq!(body["held"], json!([]), "{body}");
    app.stop().await;
}

/// A dock's feed: `(event, alert_id)` of each event frame until `n` have come.
async fn feed_events(feed: &mut WidgetClient, n: usize) -> Vec<(String, Option<String>)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let frame = feed.next_json().await;
        assert_eq!(frame["type"], "event", "{frame}");
        assert!(
            frame["id"].as_u64().is_some() && frame["at"].as_u64().is_some(),
            "{frame}"
        );
        seen.push((
            frame["event"].as_str().unwrap().to_owned(),
            frame["alert_id"].as_str().map(str::to_owned),
        ));
    }
    seen
}

fn feed_url(app: &TestApp, receiver: &str, query: &str) -> String {
    format!(
        "{}/ws/{receiver}/feed?token={}{query}",
        app.base.replace("http://", "ws://"),
        app.dashboard_token(receiver)
    )
}

#[actix_web::test]
async fn the_feed_tells_docks_on_every_node_what_happens_as_it_happens() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    // A dock on node B; everything below is done on node A.
    let mut dock = WidgetClient::connect(&feed_url(&b, "alice", ""))
        .await
        .unwrap();
    let mut w = a.widget("alice").await;
    let some = |id: &str| Some(id.to_owned());
    let connected = feed_events(&mut dock, 1).await;
    assert_eq!(connected, [("widget_connected".to_owned(), None)]);

    let a1 = a.publish_alert("alice", "one").await;
    assert_eq!(w.next_alert().await.0, a1);
    assert_eq!(
        feed_events(&mut dock, 2).await,
        [("queued".into(), some(&a1)), ("sent".into(), some(&a1))]
    );
    w.show(&a1).await;
    assert_eq!(
        feed_events(&mut dock, 2).await,
        [("started".into(), some(&a1)), ("done".into(), some(&a1))]
    );
    let (status, _) = a.control("/receivers/alice/pause", None).await;
    assert_eq!(status, 200);
    assert_eq!(feed_events(&mut dock, 1).await, [("paused".into(), None)]);
    // Told on node A, heard on node B, whatever the call.
    let queued = a.publish_alert("alice", "to clear").await;
    assert_eq!(
        feed_events(&mut dock, 1).await,
        [("queued".into(), some(&queued))]
    );
    assert_eq!(a.clear("alice").await.0, 200);
    let frame = dock.next_json().await;
    assert_eq!(
        (&frame["event"], &frame["count"]),
        (&json!("cleared"), &json!(1)),
        "{frame}"
    );

    // A dock that reconnects with the last event it had gets what it missed, then live ones.
    let last = {
        let (_, body) = a.control("/receivers/alice/resume", None).await;
        assert_eq!(body["paused"], false);
        let frame = dock.next_json().await;
        assert_eq!(frame["event"], "resumed", "{frame}");
        frame["id"].as_u64().unwrap()
    };
    drop(dock);
    let a2 = a.publish_alert("alice", "two").await;
    assert_eq!(w.next_alert().await.0, a2);
    let mut dock = WidgetClient::connect(&feed_url(&b, "alice", &format!("&since={last}")))
        .await
        .unwrap();
    // Missed on node B while no dock was open there: B kept them, having heard them.
    let missed = feed_events(&mut dock, 2).await;
    assert_eq!(
        missed,
        [("queued".into(), some(&a2)), ("sent".into(), some(&a2))]
    );
    // Since an event no node kept: reset.
    let mut stale = WidgetClient::connect(&feed_url(&a, "alice", "&since=1"))
        .await
        .unwrap();
    assert_eq!(stale.next_json().await["type"], "reset");

    // Only a dashboard token (or a publish key) opens a feed.
    let url = format!(
        "{}/ws/alice/feed?token={}",
        a.base.replace("http://", "ws://"),
        a.token("alice")
    );
    assert!(
        WidgetClient::connect(&url).await.is_err(),
        "a widget token opens no feed"
    );

    // Rotating the dashboard token on node A closes the dock on node B.
    let (status, _) = a
        .control("/receivers/alice/tokens/rotate?which=dashboard", None)
        .await;
    assert_eq!(status, 200);
    let closed = loop {
        match dock.next_within(PROMPTLY).await {
            Some(Incoming::Json(frame)) => assert_eq!(frame["type"], "event", "{frame}"),
            other => break other,
        }
    };
    assert!(
        matches!(closed, Some(Incoming::Closed(Some(4001)))),
        "{closed:?}"
    );
}
