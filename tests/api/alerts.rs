//! The donor's place in line: `eta_ms` in the publish answer, `GET /alerts/{id}`, and the signed
//! status link, on both stores.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const GAP_MS: u64 = 500;

async fn app_with_gap(redis: Option<&RedisServer>) -> TestApp {
    let mut args = serve_args(redis.map(RedisServer::url));
    args.alert_gap_ms = GAP_MS;
    TestApp::spawn(args).await
}

/// With alerts of known durations ahead, each alert's `eta_ms` is within one gap of when it
/// really shows: the widget starts each as it arrives and finishes it after its duration.
async fn eta_is_within_one_gap_of_the_truth(app: TestApp) {
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let durations = [1000u64, 1300, 1000, 1000];
    let mut published = Vec::new();
    for (i, ms) in durations.iter().enumerate() {
        let (status, body) = app
            .publish(json!({"receiver": "alice", "message": format!("#{i}"), "duration_ms": ms}))
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["position"], i, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        published.push((id, Instant::now(), body["eta_ms"].as_u64().expect("an eta")));
    }
    // What each answered, before anything showed: the durations ahead and a gap after each.
    let etas: Vec<u64> = published.iter().map(|p| p.2).collect();
    assert_eq!(
        etas,
        [0, 1000 + GAP_MS, 2300 + 2 * GAP_MS, 3300 + 3 * GAP_MS]
    );
    for (n, ((id, at, eta), ms)) in published.iter().zip(durations).enumerate() {
        let (shown, _, _) = w.next_alert().await;
        let truth = at.elapsed().as_millis() as i64;
        assert_eq!(&shown, id);
        assert!(
            (truth - *eta as i64).unsigned_abs() <= GAP_MS,
            "{id}: eta {eta} ms, shown after {truth} ms"
        );
        if n + 1 == durations.len() {
            break;
        }
        w.started(id).await;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        w.done(id).await;
    }
    app.stop().await;
}

#[actix_web::test]
async fn eta_is_within_one_gap_of_the_truth_on_the_embedded_store() {
    eta_is_within_one_gap_of_the_truth(app_with_gap(None).await).await;
}

#[actix_web::test]
async fn eta_is_within_one_gap_of_the_truth_on_redis() {
    let redis = RedisServer::spawn().await;
    eta_is_within_one_gap_of_the_truth(app_with_gap(Some(&redis)).await).await;
}

/// `GET /alerts/{id}` and the status link follow one alert from queued to done.
async fn an_alert_is_followed_from_queued_to_done(app: TestApp) {
    // No widget: it waits for one, and says so.
    let (_, first) = app
        .publish(json!({"receiver": "alice", "message": "one"}))
        .await;
    let (_, second) = app
        .publish(json!({"receiver": "alice", "message": "two"}))
        .await;
    assert_eq!(
        (&first["eta_ms"], &first["waiting_for"]),
        (&Value::Null, &json!("widget")),
        "{first}"
    );
    let id = second["id"].as_str().unwrap();
    let (status, body) = app.get(&format!("/alerts/{id}"), Some(PUBLISH_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["status"], &body["position"], &body["receiver"]),
        (&json!("queued"), &json!(1), &json!("alice")),
        "{body}"
    );
    // The donor's link: that alert, and no other.
    let link = second["status_url"].as_str().expect("a status link");
    let path = link.split_once("://").unwrap().1;
    let path = &path[path.find('/').unwrap()..];
    assert!(path.starts_with(&format!("/alerts/{id}/status?")), "{path}");
    let json_path = path.replacen("/status?", "/status.json?", 1);
    let (status, seen) = app.get(&json_path, None).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(
        (&seen["id"], &seen["status"]),
        (&json!(id), &json!("queued"))
    );
    let other = first["id"].as_str().unwrap();
    assert!(!seen.to_string().contains(other), "{seen}");
    // The widget shows both: the second is in flight, then done, with when it showed.
    let mut w = app.widget("alice").await;
    let (shown, _, _) = w.next_alert().await;
    w.show(&shown).await;
    let (shown, _, _) = w.next_alert().await;
    assert_eq!(shown, id);
    w.started(id).await;
    eventually(|| async {
        let (_, seen) = app.get(&json_path, None).await;
        seen["status"] == "in_flight" && seen["shown_at"].is_u64()
    })
    .await;
    w.done(id).await;
    eventually(|| async {
        let (_, seen) = app.get(&json_path, None).await;
        seen["status"] == "done" && seen["shown_at"].is_u64() && seen["position"].is_null()
    })
    .await;
    let (status, body) = app.get(&format!("/alerts/{id}"), Some(PUBLISH_KEY)).await;
    assert_eq!((status, &body["status"]), (200, &json!("done")), "{body}");
    app.stop().await;
}

#[actix_web::test]
async fn an_alert_is_followed_from_queued_to_done_on_the_embedded_store() {
    an_alert_is_followed_from_queued_to_done(TestApp::memory().await).await;
}

#[actix_web::test]
async fn an_alert_is_followed_from_queued_to_done_on_redis() {
    let redis = RedisServer::spawn().await;
    an_alert_is_followed_from_queued_to_done(TestApp::redis(&redis).await).await;
}

#[actix_web::test]
async fn a_status_link_opens_its_own_alert_only() {
    let app = TestApp::memory().await;
    let (_, first) = app
        .publish(json!({"receiver": "alice", "message": "one"}))
        .await;
    let (_, second) = app
        .publish(json!({"receiver": "alice", "message": "two"}))
        .await;
    let link = |body: &Value| {
        let url = body["status_url"].as_str().unwrap().to_owned();
        let path = url.split_once("://").unwrap().1.to_owned();
        path[path.find('/').unwrap()..].replacen("/status?", "/status.json?", 1)
    };
    let (first_link, second_link) = (link(&first), link(&second));
    let (status, _) = app.get(&first_link, None).await;
    assert_eq!(status, 200);
    // A tampered signature, another alert's id under this signature, another receiver.
    let sig_at = first_link.find("sig=").unwrap() + 4;
    let mut tampered = first_link.clone().into_bytes();
    tampered[sig_at] = if tampered[sig_at] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    let second_id = second["id"].as_str().unwrap();
    let first_id = first["id"].as_str().unwrap();
    let swapped = first_link.replacen(first_id, second_id, 1);
    let elsewhere = first_link.replacen("receiver=alice", "receiver=bob", 1);
    let unsigned = first_link[..first_link.find("&sig=").unwrap()].to_owned();
    for path in [&tampered, &swapped, &elsewhere, &unsigned] {
        let (status, body) = app.get(path, None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("invalid_signature")),
            "{path}: {body}"
        );
    }
    // The page itself refuses the same, and opens with the right one.
    let page = |p: &str| p.replacen("/status.json?", "/status?", 1);
    let (status, _) = app.get_text(&page(&tampered)).await;
    assert_eq!(status, 401);
    let (status, html) = app.get_text(&page(&second_link)).await;
    assert_eq!(status, 200);
    assert!(html.contains("status.js"), "{html}");
    // GET /alerts/{id}: the publish key, a known id.
    let (status, _) = app.get(&format!("/alerts/{first_id}"), None).await;
    assert_eq!(status, 401);
    let (status, body) = app
        .get(
            "/alerts/7b0a4f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            Some(PUBLISH_KEY),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("alert_not_found"))
    );
    app.stop().await;
}
