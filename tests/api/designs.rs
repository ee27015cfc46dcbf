//! A receiver's designs over HTTP, on every store: checked strictly, kept version by version,
//! and sent with the next alert to every widget, on every node, with no reload.

use serde_json::{json, Value};

use crate::helpers::*;

async fn put(app: &TestApp, receiver: &str, auth: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = app
        .http
        .put(format!("{}/receivers/{receiver}/designs", app.base))
        .insert_header(("Content-Type", "application/json"));
    if let Some(auth) = auth {
        req = req.insert_header(("Authorization", format!("Bearer {auth}")));
    }
    let mut res = req
        .send_body(body.to_owned())
        .await
        .expect("the node answers");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn donation_design() -> Value {
    json!({"locale": "pt-BR", "designs": {
        "donation": {
            "layout": "image_left", "title": "{from} mandou {amount}", "text_color": "#ffffff",
            "duration_ms": 4000,
            "animation_in": {"name": "slide_from_left", "duration_ms": 300},
            "variations": [
                {"name": "big", "when": {"min_amount": {"value": "100", "currency": "BRL"}},
                 "set": {"text_color": "#ff3355", "layout": "image_behind"}}
            ]
        },
        "default": {"font_size": 48}
    }})
}

async fn designs_are_checked_strictly_and_kept_version_by_version(app: &TestApp) {
    let (status, body) = app.get("/receivers/alice/designs", Some(PUBLISH_KEY)).await;
    assert_eq!(
        (status, &body["version"], &body["designs"]),
        (200, &json!(0), &json!({}))
    );

    let good = donation_design().to_string();
    assert_eq!(put(app, "alice", None, &good).await.0, 401);
    assert_eq!(put(app, "alice", Some("not-a-key"), &good).await.0, 401);

    let refused = [
        (
            json!({"designs": {"donation": {"colour": "#fff"}}}),
            "designs.donation.colour",
        ),
        (
            json!({"designs": {"donation": {"text_color": "red"}}}),
            "designs.donation.text_color",
        ),
        (
            json!({"designs": {"raid": {"animation_out": {"name": "spin", "duration_ms": 300}}}}),
            "designs.raid.animation_out.name",
        ),
        (
            json!({"designs": {"raid": {"css": "x".repeat(16 * 1024 + 1)}}}),
            "designs.raid.css",
        ),
        (
            json!({"designs": {"follow": {"variations": [{"when": {"loud": true}}]}}}),
            "designs.follow.variations[0].when",
        ),
        (
            json!({"designs": {"follow": {"title": "{name}"}}}),
            "designs.follow.title",
        ),
    ];
    for (body, field) in refused {
        let (status, answer) = put(app, "alice", Some(PUBLISH_KEY), &body.to_string()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    assert_eq!(
        put(app, "alice", Some(PUBLISH_KEY), "{not json").await.0,
        400
    );
    // Nothing refused was kept.
    let (_, body) = app.get("/receivers/alice/designs", Some(PUBLISH_KEY)).await;
    assert_eq!(body["version"], 0);

    // The dashboard token may change them too.
    let token = app.dashboard_token("alice");
    let (status, body) = put(app, "alice", Some(&token), &good).await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    let (status, body) = app.get("/receivers/alice/designs", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], 1);
    assert_eq!(body["locale"], "pt-BR");
    assert_eq!(body["designs"]["donation"]["variations"][0]["name"], "big");
    assert!(body["updated_at"].is_string(), "{body}");

    // An editor that read version 0 is refused over version 1; one that read 1 goes through.
    let mut stale = donation_design();
    stale["version"] = json!(0);
    let (status, body) = put(app, "alice", Some(PUBLISH_KEY), &stale.to_string()).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("version_conflict")),
        "{body}"
    );
    let second = json!({"version": 1, "designs": {"default": {"layout": "text_only"}}});
    let (status, body) = put(app, "alice", Some(PUBLISH_KEY), &second.to_string()).await;
    assert_eq!((status, &body["version"]), (200, &json!(2)), "{body}");

    let (_, versions) = app
        .get("/receivers/alice/designs/versions", Some(PUBLISH_KEY))
        .await;
    let numbers: Vec<&Value> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["version"])
        .collect();
    assert_eq!(numbers, [&json!(2), &json!(1)]);
    let (_, first) = app
        .get("/receivers/alice/designs?version=1", Some(PUBLISH_KEY))
        .await;
    assert_eq!(first["designs"]["donation"]["layout"], "image_left");
    let (status, _) = app
        .get("/receivers/alice/designs?version=9", Some(PUBLISH_KEY))
        .await;
    assert_eq!(status, 404);
    // Another receiver's are its own.
    let (_, bob) = app.get("/receivers/bob/designs", Some(PUBLISH_KEY)).await;
    assert_eq!(bob["version"], 0);
}

#[actix_web::test]
async fn designs_are_checked_strictly_and_kept_version_by_version_embedded() {
    let app = TestApp::memory().await;
    designs_are_checked_strictly_and_kept_version_by_version(&app).await;
}

#[actix_web::test]
async fn designs_are_checked_strictly_and_kept_version_by_version_on_redis() {
    let redis = RedisServer::spawn().await;
    let app = TestApp::redis(&redis).await;
    designs_are_checked_strictly_and_kept_version_by_version(&app).await;
}

#[actix_web::test]
async fn designs_outlive_a_restart_of_the_embedded_store() {
    let dir = DataDir::fresh();
    let app = TestApp::embedded_in(&dir).await;
    let (status, _) = put(
        &app,
        "alice",
        Some(PUBLISH_KEY),
        &donation_design().to_string(),
    )
    .await;
    assert_eq!(status, 200);
    app.stop().await;
    let app = TestApp::embedded_in(&dir).await;
    let (_, body) = app.get("/receivers/alice/designs", Some(PUBLISH_KEY)).await;
    assert_eq!(
        (&body["version"], &body["locale"]),
        (&json!(1), &json!("pt-BR")),
        "{body}"
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir.0);
}

/// A widget on `shows` gets alerts with the look resolved from the designs put on `puts`, from
/// its next alert on.
async fn a_design_change_reaches_the_next_alert(puts: &TestApp, shows: &TestApp) {
    let mut w = shows.widget("alice").await;
    puts.wait_for_widgets("alice", 1).await;
    let donation = |value: &str| {
        json!({"receiver": "alice", "kind": "donation", "from": "Ana",
               "amount": {"value": value, "currency": "BRL"}})
    };
    let (status, _) = puts.publish(donation("10")).await;
    assert_eq!(status, 202);
    let frame = w.next_json().await;
    assert_eq!(frame["design"]["design"], "built_in", "{frame}");
    assert_eq!(
        frame["design"]["title"], "{from} donated {amount}",
        "{frame}"
    );
    let first = frame["alert"]["id"].as_str().unwrap().to_owned();

    // Changed while the first alert shows: it keeps its look, and the next takes the new one.
    let (status, body) = put(
        puts,
        "alice",
        Some(PUBLISH_KEY),
        &donation_design().to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    w.show(&first).await;
    if !std::ptr::eq(puts, shows) {
        // The other node hears of the new version through the store's notice, a moment later:
        // alerts go out with the old version until then, never with it after.
        let mut seen_new = false;
        for _ in 0..100 {
            let (status, _) = puts
                .publish(json!({"receiver": "alice", "kind": "test"}))
                .await;
            assert_eq!(status, 202);
            let frame = w.next_json().await;
            let version = frame["design_version"].as_u64().unwrap();
            assert!(version == 1 || !seen_new, "back to an old version: {frame}");
            seen_new |= version == 1;
            w.show(frame["alert"]["id"].as_str().unwrap()).await;
            if seen_new {
                break;
            }
        }
        assert!(seen_new, "the other node never took the new designs");
    }
    let mut played = vec![(
        first.clone(),
        json!({"version": 0, "design": "built_in", "variation": null}),
    )];
    for (value, variation, color) in [("10", None, "#ffffff"), ("150.00", Some("big"), "#ff3355")] {
        let (status, _) = puts.publish(donation(value)).await;
        assert_eq!(status, 202);
        let frame = w.next_json().await;
        assert_eq!(frame["type"], "alert", "{frame}");
        assert_eq!(frame["design_version"], 1, "{frame}");
        assert_eq!(frame["design"]["design"], "donation", "{frame}");
        assert_eq!(frame["design"]["locale"], "pt-BR", "{frame}");
        assert_eq!(
            frame["design"]["title"], "{from} mandou {amount}",
            "{frame}"
        );
        assert_eq!(
            frame["design"]["font_size"], 48,
            "from the default design: {frame}"
        );
        assert_eq!(frame["design"]["variation"].as_str(), variation, "{frame}");
        assert_eq!(frame["design"]["text_color"], color, "{frame}");
        assert_eq!(
            frame["alert"]["duration_ms"], 4000,
            "the design's, the alert had none: {frame}"
        );
        let id = frame["alert"]["id"].as_str().unwrap().to_owned();
        w.show(&id).await;
        played.push((
            id,
            json!({"version": 1, "design": "donation", "variation": variation}),
        ));
    }
    // History says which design and variation each played with.
    let history = eventually_value(|| async {
        let (_, body) = puts
            .get("/receivers/alice/history?limit=50", Some(PUBLISH_KEY))
            .await;
        let entries = body["history"].as_array().cloned().unwrap_or_default();
        let all = played
            .iter()
            .all(|(id, _)| entries.iter().any(|e| e["id"] == id.as_str()));
        all.then_some(body)
    })
    .await;
    for (id, expected) in &played {
        let entries = history["history"].as_array().unwrap();
        let entry = entries.iter().find(|e| e["id"] == id.as_str()).unwrap();
        assert_eq!(&entry["design"], expected, "{entry}");
    }
    let mut own = donation("1");
    own["duration_ms"] = json!(2500);
    assert_eq!(puts.publish(own).await.0, 202);
    let frame = w.next_json().await;
    assert_eq!(
        frame["alert"]["duration_ms"], 2500,
        "its own duration: {frame}"
    );
}

#[actix_web::test]
async fn a_design_change_reaches_the_next_alert_embedded() {
    let app = TestApp::memory().await;
    a_design_change_reaches_the_next_alert(&app, &app).await;
}

#[actix_web::test]
async fn a_design_put_on_one_node_reaches_the_widgets_of_another() {
    let redis = RedisServer::spawn().await;
    let a = TestApp::redis(&redis).await;
    let b = TestApp::redis(&redis).await;
    a_design_change_reaches_the_next_alert(&a, &b).await;
}

#[actix_web::test]
async fn on_a_cluster_a_design_put_on_one_node_reaches_the_widgets_of_another() {
    let cluster = RedisCluster::spawn().await;
    let mut args = serve_args(Some(cluster.seeds()));
    args.redis.cluster = true;
    let a = TestApp::spawn(args.clone()).await;
    let b = TestApp::spawn(args).await;
    a_design_change_reaches_the_next_alert(&a, &b).await;
}

/// Shows the alert in flight on `w` and answers how long the next one took to arrive.
async fn next_after_done(w: &mut WidgetClient, id: &str) -> (String, std::time::Duration) {
    w.show(id).await;
    let done = std::time::Instant::now();
    let (next, _, _) = w.next_alert().await;
    (next, done.elapsed())
}

#[actix_web::test]
async fn the_gap_a_receiver_sets_holds_between_alerts() {
    let app = TestApp::memory().await;
    let (status, body) = put(
        &app,
        "alice",
        Some(PUBLISH_KEY),
        &json!({"alert_gap_ms": 1200, "designs": {}}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(
        &app,
        "bob",
        Some(PUBLISH_KEY),
        &json!({"alert_gap_ms": 4000, "designs": {}}).to_string(),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("alert_gap_ms")),
        "{body}"
    );
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let first = app.publish_alert("alice", "one").await;
    let second = app.publish_alert("alice", "two").await;
    let (id, _, _) = w.next_alert().await;
    assert_eq!(id, first, "the first goes at once");
    let (next, waited) = next_after_done(&mut w, &first).await;
    assert_eq!(next, second);
    assert!(
        waited.as_millis() >= 1150,
        "the gap did not hold: {waited:?}"
    );
    // The widget starts it when it shows it: its time counts from then, not from the send.
    let third = app.publish_alert("alice", "three").await;
    let (next, waited) = next_after_done(&mut w, &second).await;
    assert_eq!(next, third);
    assert!(
        waited.as_millis() >= 1150,
        "the gap did not hold: {waited:?}"
    );
}

#[actix_web::test]
async fn the_gap_holds_on_every_node() {
    let redis = RedisServer::spawn().await;
    let mut args = serve_args(Some(redis.url()));
    args.alert_gap_ms = 800;
    let a = TestApp::spawn(args.clone()).await;
    let b = TestApp::spawn(args).await;
    let mut on_a = a.widget("alice").await;
    let mut on_b = b.widget("alice").await;
    a.wait_for_widgets("alice", 2).await;
    let first = a.publish_alert("alice", "one").await;
    let second = b.publish_alert("alice", "two").await;
    assert_eq!(on_a.next_alert().await.0, first);
    assert_eq!(on_b.next_alert().await.0, first);
    // Done on a: the next goes out from the store at once, and each node holds its frame back
    // for the gap from when it heard the first leave.
    let (next, waited) = next_after_done(&mut on_a, &first).await;
    assert_eq!(next, second);
    let started = std::time::Instant::now();
    let (on_b_next, _, _) = on_b.next_alert().await;
    assert_eq!(on_b_next, second);
    assert!(waited.as_millis() >= 750, "a: {waited:?}");
    // b heard of the done a moment after a did, so its wait ends no sooner than a's less that.
    assert!(waited + started.elapsed() >= std::time::Duration::from_millis(750));
}

/// Retries `check` until it answers something, failing after [`PROMPTLY`].
async fn eventually_value<F, Fut>(mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = std::time::Instant::now() + PROMPTLY;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within {PROMPTLY:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn designs_up_to_their_limit_are_taken_and_a_larger_body_is_a_json_413() {
    let app = TestApp::memory().await;
    // Twenty kinds with 15 KiB of CSS each: 300 KiB, past actix's own default body limit.
    let css = ".title { color: #fff }\n".repeat(15 * 1024 / 23);
    let kinds: serde_json::Map<String, Value> = (0..20)
        .map(|i| (format!("kind{i}"), json!({"css": css})))
        .collect();
    let body = json!({"designs": kinds}).to_string();
    assert!(body.len() > 300_000, "{}", body.len());
    let (status, answer) = app.put_designs("alice", &body).await;
    assert_eq!((status, &answer["version"]), (200, &json!(1)), "{answer}");
    let huge = format!(
        r#"{{"designs": {{}}, "pad": "{}"}}"#,
        "x".repeat(600 * 1024)
    );
    let (status, answer) = app.put_designs("alice", &huge).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (413, &json!("payload_too_large")),
        "{answer}"
    );
}
