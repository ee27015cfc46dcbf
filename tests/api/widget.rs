//! The widget protocol over real WebSockets: delivery, acknowledgements, reconnects, and input
//! a widget should never send.

use std::time::Duration;

use actix_web::web::Bytes;
use awc::ws;
use serde_json::json;

use crate::helpers::*;

const QUIET: Duration = Duration::from_millis(300);

#[actix_web::test]
async fn a_widget_shows_alerts_one_at_a_time_in_order() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    let ids = [
        app.publish_alert("alice", "one").await,
        app.publish_alert("alice", "two").await,
        app.publish_alert("alice", "three").await,
    ];
    for (n, id) in ids.iter().enumerate() {
        let (got, attempt, alert) = w.next_alert().await;
        assert_eq!((&got, attempt), (id, 1), "alert {n}");
        assert_eq!(alert["receiver"], "alice");
        assert_eq!(alert["kind"], "donation");
        assert_eq!(alert["duration_ms"], 8000);
        w.started(id).await;
        // Nothing else comes while this one is on screen.
        w.expect_silence(QUIET).await;
        w.done(id).await;
    }
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;
}

#[actix_web::test]
async fn alerts_published_with_no_widget_wait_for_the_first_one() {
    let app = TestApp::memory().await;
    let a1 = app.publish_alert("alice", "one").await;
    let a2 = app.publish_alert("alice", "two").await;
    let status = app.status("alice").await;
    assert_eq!(
        (status["queued"].as_u64(), status["in_flight"].is_null()),
        (Some(2), true)
    );

    let mut w = app.widget("alice").await;
    assert_eq!(w.next_alert().await.0, a1);
    w.done(&a1).await;
    assert_eq!(w.next_alert().await.0, a2);
}

#[actix_web::test]
async fn every_widget_of_a_receiver_gets_the_alert_and_the_first_done_completes_it() {
    let app = TestApp::memory().await;
    let mut obs = app.widget("alice").await;
    let mut preview = app.widget("alice").await;
    app.wait_for_widgets("alice", 2).await;
    let a1 = app.publish_alert("alice", "one").await;
    let a2 = app.publish_alert("alice", "two").await;
    assert_eq!(obs.next_alert().await.0, a1);
    assert_eq!(preview.next_alert().await.0, a1);

    obs.done(&a1).await;
    assert_eq!(obs.next_alert().await.0, a2);
    assert_eq!(preview.next_alert().await.0, a2);
    // The preview's late done for a1 changes nothing.
    preview.done(&a1).await;
    obs.expect_silence(QUIET).await;
    let status = app.status("alice").await;
    assert_eq!(status["in_flight"]["id"], a2.as_str());
}

#[actix_web::test]
async fn a_refreshed_widget_gets_the_alert_in_flight_again() {
    let app = TestApp::memory().await;
    let mut obs = app.widget("alice").await;
    let mut preview = app.widget("alice").await;
    app.wait_for_widgets("alice", 2).await;
    let a1 = app.publish_alert("alice", "one").await;
    obs.next_alert().await;
    preview.next_alert().await;
    obs.started(&a1).await;

    // OBS refreshes while the preview stays: the alert stays in flight and comes back at once.
    obs.close().await;
    let mut obs = app.widget("alice").await;
    let (id, attempt, _) = obs.next_alert().await;
    assert_eq!((id.as_str(), attempt), (a1.as_str(), 1));
    preview.expect_silence(QUIET).await;
}

#[actix_web::test]
async fn the_last_widget_leaving_sends_the_alert_again_to_the_next() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    let a1 = app.publish_alert("alice", "one").await;
    assert_eq!(w.next_alert().await.0, a1);
    w.started(&a1).await;
    w.close().await;
    eventually(|| async { app.status("alice").await["queued"] == 1 }).await;

    let mut w = app.widget("alice").await;
    let (id, attempt, _) = w.next_alert().await;
    assert_eq!((id.as_str(), attempt), (a1.as_str(), 2));
}

#[actix_web::test]
async fn an_alert_never_started_is_sent_again_and_a_broken_widget_cannot_hang_the_queue() {
    let mut args = serve_args(None);
    args.start_timeout_ms = 300;
    args.ack_grace_ms = 200;
    let app = TestApp::spawn(args).await;
    let mut w = app.widget("alice").await;
    let a1 = app.publish_alert("alice", "one").await;
    let (_, published) = app
        .publish(json!({ "receiver": "alice", "duration_ms": 1000 }))
        .await;
    let a2 = published["id"].as_str().unwrap().to_owned();

    // The widget never says started: the frame counts as lost and comes again.
    let (id, attempt, _) = w.next_alert().await;
    assert_eq!((id.as_str(), attempt), (a1.as_str(), 1));
    let (id, attempt, _) = w.next_alert().await;
    assert_eq!((id.as_str(), attempt), (a1.as_str(), 2));
    w.done(&a1).await;

    // The next one starts but never finishes: it expires after duration + grace.
    let (id, _, _) = w.next_alert().await;
    assert_eq!(id, a2);
    w.started(&a2).await;
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;
    assert_eq!(app.status("alice").await["queued"], 0);
}

#[actix_web::test]
async fn garbage_frames_get_an_error_and_the_connection_stays() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    for bad in [
        "not json",
        "{}",
        r#"{"type":"dance"}"#,
        r#"{"type":"done"}"#,
        r#"{"type":"done","id":5}"#,
        "[1,2,3]",
    ] {
        w.send_text(bad).await;
        let reply = w.next_json().await;
        assert_eq!(reply["type"], "error", "{bad}");
        assert_eq!(reply["code"], "invalid_frame", "{bad}");
    }
    w.send_json(json!({ "type": "done", "id": "x".repeat(100) }))
        .await;
    assert_eq!(w.next_json().await["type"], "error");
    w.send_raw(ws::Message::Binary(vec![0u8, 159, 146, 150].into()))
        .await;
    assert_eq!(w.next_json().await["code"], "invalid_frame");
    w.send_json(json!({ "type": "ping" })).await;
    assert_eq!(w.next_json().await, json!({ "type": "pong" }));

    // Still a working widget.
    let a1 = app.publish_alert("alice", "after the garbage").await;
    assert_eq!(w.next_alert().await.0, a1);
}

/// A message split into continuation frames is refused like an oversized one (1009): the
/// widget's frames are read one by one, and a browser sends messages this small whole.
#[actix_web::test]
async fn a_fragmented_message_closes_that_widget_with_1009() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let first = Bytes::from_static(br#"{"type":"#);
    w.send_raw(ws::Message::Continuation(actix_http::ws::Item::FirstText(
        first,
    )))
    .await;
    w.send_raw(ws::Message::Continuation(actix_http::ws::Item::Last(
        Bytes::from_static(br#""ping"}"#),
    )))
    .await;
    match w.next_within(PROMPTLY).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1009)),
        other => panic!("expected a close, got {other:?}"),
    }
    app.wait_for_widgets("alice", 0).await;
}

#[actix_web::test]
async fn an_oversized_frame_closes_that_widget_only() {
    let app = TestApp::memory().await;
    let mut other = app.widget("alice").await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 2).await;
    w.send_text(&"x".repeat(64 * 1024)).await;
    match w.next_within(PROMPTLY).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1009)),
        other => panic!("expected a close, got {other:?}"),
    }
    app.wait_for_widgets("alice", 1).await;
    let a1 = app.publish_alert("alice", "still here").await;
    assert_eq!(other.next_alert().await.0, a1);
}

#[actix_web::test]
async fn a_forged_or_missing_token_is_refused_before_the_upgrade() {
    let app = TestApp::memory().await;
    let ws_base = app.base.replace("http://", "ws://");
    let bob = app.token("bob");
    let forged = format!("{}0", &app.token("alice")[..63]);
    for url in [
        format!("{ws_base}/ws/alice"),
        format!("{ws_base}/ws/alice?token="),
        format!("{ws_base}/ws/alice?token={bob}"),
        format!("{ws_base}/ws/alice?token={forged}"),
        format!("{ws_base}/ws/alice?token=%00%FF"),
    ] {
        match WidgetClient::connect(&url).await {
            Err(awc::error::WsClientError::InvalidResponseStatus(s)) => {
                assert_eq!(s.as_u16(), 401, "{url}")
            }
            Err(e) => panic!("{url}: unexpected {e}"),
            Ok(_) => panic!("{url}: a forged token was accepted"),
        }
    }
    // The page is on stream whatever it answers: refused, it is the same transparent page,
    // marked so its script knows, with no error text to show.
    for (path, status, why) in [
        ("/widget/alice?token=nope", 401, "token"),
        ("/widget/alice", 401, "token"),
        ("/widget/not%20a%20receiver?token=nope", 400, "receiver"),
    ] {
        let mut res = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{path}");
        let page = res.body().await.unwrap();
        let page = String::from_utf8_lossy(&page);
        assert!(
            page.contains(&format!("data-refused=\"{why}\"")),
            "{path}: {page}"
        );
        assert!(
            !page.contains("invalid_token") && !page.contains("error"),
            "{page}"
        );
    }
    assert_eq!(app.status("alice").await["widgets"], 0);
}

#[actix_web::test]
async fn the_widget_page_and_its_assets_are_served() {
    let app = TestApp::memory().await;
    let mut res = app
        .http
        .get(format!(
            "{}/widget/alice?token={}",
            app.base,
            app.token("alice")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let csp = res.headers().get("content-security-policy").unwrap();
    assert!(csp.to_str().unwrap().contains("script-src 'self'"));
    let page = res.body().await.unwrap();
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("/widget-assets/widget.js"));
    for asset in ["widget.js", "widget.css"] {
        let (status, _) = app.get(&format!("/widget-assets/{asset}"), None).await;
        assert_eq!(status, 200, "{asset}");
    }
}

#[actix_web::test]
async fn a_node_shutting_down_closes_its_widgets_with_1012() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    let stopper = app.stopper.clone();
    actix_web::rt::spawn(async move { stopper.stop().await });
    match w.next_within(PROMPTLY).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1012)),
        other => panic!("expected a close, got {other:?}"),
    }
}

async fn connect_status(app: &TestApp, receiver: &str) -> Result<WidgetClient, u16> {
    let url = format!(
        "{}/ws/{receiver}?token={}",
        app.base.replace("http://", "ws://"),
        app.token(receiver)
    );
    match WidgetClient::connect(&url).await {
        Ok(w) => Ok(w),
        Err(awc::error::WsClientError::InvalidResponseStatus(s)) => Err(s.as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[actix_web::test]
async fn a_receiver_past_its_widget_limit_is_refused_with_429_on_every_node() {
    let redis = RedisServer::spawn().await;
    let mut args = serve_args(Some(redis.url()));
    args.max_widgets_per_receiver = 2;
    let a = TestApp::spawn(args.clone()).await;
    let b = TestApp::spawn(args).await;
    let first = a.widget("alice").await;
    let _second = b.widget("alice").await;
    assert_eq!(connect_status(&a, "alice").await.err(), Some(429));
    assert_eq!(connect_status(&b, "alice").await.err(), Some(429));
    assert!(
        connect_status(&a, "bob").await.is_ok(),
        "other receivers are not affected"
    );

    first.close().await;
    a.wait_for_widgets("alice", 1).await;
    assert!(connect_status(&b, "alice").await.is_ok());
}

#[actix_web::test]
async fn a_node_past_its_connection_limit_answers_503() {
    let mut args = serve_args(None);
    args.max_connections = 1;
    let app = TestApp::spawn(args).await;
    let first = app.widget("alice").await;
    assert_eq!(connect_status(&app, "bob").await.err(), Some(503));
    first.close().await;
    eventually(|| async { connect_status(&app, "bob").await.is_ok() }).await;
}

#[actix_web::test]
async fn a_widget_that_stops_reading_is_closed_with_1013_and_the_others_go_on() {
    let app = TestApp::memory().await;
    let mut slow = app.widget("alice").await;
    let mut fast = app.widget("alice").await;
    app.wait_for_widgets("alice", 2).await;
    // Enough big alerts to fill the slow widget's socket buffers and its outbox.
    let data = json!({ "padding": "x".repeat(3500) });
    let total = 3000;
    for _ in 0..total {
        let (status, _) = app
            .publish(json!({ "receiver": "alice", "data": data }))
            .await;
        assert_eq!(status, 202);
    }
    let mut shown = 0;
    while shown < total {
        let (id, _, _) = fast.next_alert().await;
        fast.show(&id).await;
        shown += 1;
    }
    // The slow one gets what was buffered for it, then the close.
    let mut received = 0;
    let code = loop {
        match slow.next_within(Duration::from_secs(30)).await {
            Some(Incoming::Json(_)) => received += 1,
            Some(Incoming::Closed(code)) => break code,
            None => panic!("the slow widget was never closed"),
        }
    };
    assert_eq!(code, Some(1013));
    assert!(
        received < total,
        "it was cut off, not fed everything: {received}"
    );
    app.wait_for_widgets("alice", 1).await;
}

/// A widget that floods `ping`s through a 4 KiB receive buffer it never reads: every pong the
/// server owes it piles up until its socket takes nothing more. The server must then close it
/// (within 10 s of being stuck) rather than hold it, whatever it goes on sending.
async fn a_widget_that_sends_and_never_reads_is_closed(redis_url: Option<String>) {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn(serve_args(redis_url)).await;
    let mut raw = RawWidget::connect(&app, "alice", 4096).await;
    app.wait_for_widgets("alice", 1).await;

    let burst = RawWidget::text_frames(r#"{"type":"ping"}"#, 3000);
    // Written whole, burst after burst, so no frame is ever cut: the task ends only when the
    // server has dropped the connection and the write fails.
    let flood = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut bursts = 0u64;
        loop {
            if let Err(e) = raw.stream.write_all(&burst).await {
                return (started.elapsed(), bursts, e.kind());
            }
            bursts += 1;
        }
    });
    let bound = Duration::from_secs(45);
    let ended = tokio::time::timeout(bound, flood).await;
    let (after, bursts, error) = ended
        .expect("the server still held a widget that never reads")
        .expect("the flood task ran");
    eprintln!("closed after {after:?} and {bursts} bursts of 3,000 pings: {error:?}");
    app.wait_for_widgets("alice", 0).await;
}

crate::on_both_stores!(a_widget_that_sends_and_never_reads_is_closed);

/// A plain GET on the socket's path is not an upgrade: 426, and nothing in the store moves.
async fn a_get_without_an_upgrade_is_426_and_changes_nothing(redis_url: Option<String>) {
    let app = TestApp::spawn(serve_args(redis_url)).await;
    let id = app.publish_alert("alice", "waiting").await;
    let get = format!(
        "GET /ws/alice?token={} HTTP/1.1\r\nHost: cuebox\r\nConnection: close\r\n\r\n",
        app.token("alice")
    );
    for _ in 0..5 {
        let answer = raw_http(&app, get.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
        assert!(answer.contains("upgrade: websocket\r\n"), "{answer}");
        assert!(answer.contains(r#""code":"upgrade_required""#), "{answer}");
    }
    let status = app.status("alice").await;
    assert_eq!(
        (status["queued"].as_u64(), status["widgets"].as_u64()),
        (Some(1), Some(0))
    );

    // The first real widget gets the alert as its first send.
    let mut w = app.widget("alice").await;
    let (got, attempt, _) = w.next_alert().await;
    assert_eq!((got, attempt), (id, 1));
}

crate::on_both_stores!(a_get_without_an_upgrade_is_426_and_changes_nothing);

#[actix_web::test]
async fn a_widget_off_air_holds_alerts_back_only_while_the_receiver_says_so() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    w.send_json(json!({"type": "active", "active": false}))
        .await;
    eventually(|| async { app.status("alice").await["widgets_on_air"] == 0 }).await;
    let held = app.publish_alert("alice", "held while off air").await;
    w.expect_silence(Duration::from_millis(300)).await;

    // A receiver that does not hold while inactive: the widget's next word counts it on air.
    let (status, body) = app
        .put_settings("alice", json!({"hold_while_inactive": false}))
        .await;
    assert_eq!(
        (status, &body["hold_while_inactive"]),
        (200, &json!(false)),
        "{body}"
    );
    w.send_json(json!({"type": "active", "active": false}))
        .await;
    let (id, _, _) = w.next_alert().await;
    assert_eq!(id, held);
    assert_eq!(app.status("alice").await["widgets_on_air"], 1);
}

/// A preview of the receiver's widgets, as the dock or a browser tab opens one.
async fn preview(app: &TestApp, receiver: &str) -> WidgetClient {
    let url = format!(
        "{}/ws/{receiver}?token={}&preview=1",
        app.base.replace("http://", "ws://"),
        app.token(receiver)
    );
    let mut w = WidgetClient::connect(&url)
        .await
        .expect("the preview connects");
    assert_eq!(w.next_json().await["type"], "hello");
    w
}

#[actix_web::test]
async fn a_preview_neither_holds_the_queue_nor_releases_it() {
    let app = TestApp::memory().await;
    let mut p = preview(&app, "alice").await;
    let first = app.publish_alert("alice", "one").await;
    p.expect_silence(Duration::from_millis(300)).await;
    let status = app.status("alice").await;
    assert_eq!(
        (&status["widgets"], &status["queued"], &status["in_flight"]),
        (&json!(0), &json!(1), &serde_json::Value::Null),
        "a preview alone releases nothing: {status}"
    );
    assert_eq!(status["previews"], 1, "counted as a preview: {status}");

    // A widget joins: the alert goes out, to the preview as well.
    let mut w = app.widget("alice").await;
    assert_eq!(w.next_alert().await.0, first);
    assert_eq!(p.next_alert().await.0, first);
    // What the preview shows and ends changes nothing.
    p.show(&first).await;
    p.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(app.status("alice").await["in_flight"]["id"], first.as_str());
    // The widget leaves: the alert goes back, the preview holding nothing.
    w.close().await;
    eventually(|| async {
        let status = app.status("alice").await;
        status["queued"] == 1 && status["in_flight"].is_null()
    })
    .await;
}

#[actix_web::test]
async fn a_widget_that_reconnects_off_air_joins_off_air() {
    let app = TestApp::memory().await;
    let url = format!(
        "{}/ws/alice?token={}&active=0",
        app.base.replace("http://", "ws://"),
        app.token("alice")
    );
    let mut w = WidgetClient::connect(&url)
        .await
        .expect("the widget connects");
    assert_eq!(w.next_json().await["type"], "hello");
    let status = app.status("alice").await;
    assert_eq!(
        (&status["widgets"], &status["widgets_on_air"]),
        (&json!(1), &json!(0))
    );
    let held = app.publish_alert("alice", "held from the start").await;
    w.expect_silence(Duration::from_millis(300)).await;
    w.send_json(json!({"type": "active", "active": true})).await;
    assert_eq!(w.next_alert().await.0, held);
}
