//! Text-to-speech: the node makes the speech of an alert with a real engine (espeak-ng, which
//! scripts/test installs), from the words moderation left, and a broken engine holds nothing.

use serde_json::{json, Value};

use crate::helpers::*;

async fn put_designs(app: &TestApp, body: Value) {
    let (status, answer) = app.put_designs("alice", &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
}

fn tts(min_brl: Option<&str>) -> Value {
    let min = min_brl.map_or(json!({}), |m| json!({"BRL": m}));
    json!({"tts": {"enabled": true, "voice": "en", "rate": 200, "max_chars": 120, "min_amount": min},
           "designs": {}})
}

async fn speech_of(app: &TestApp, url: &str) -> (u16, Vec<u8>) {
    let mut res = app
        .http
        .get(format!("{}{url}", app.base))
        .send()
        .await
        .expect("the node answers");
    let status = res.status().as_u16();
    let body = res.body().limit(16 << 20).await.unwrap_or_default();
    (status, body.to_vec())
}

#[actix_web::test]
async fn the_speech_reads_the_moderated_words_with_a_real_engine() {
    let app = TestApp::memory().await;
    let (status, _) = app
        .put_settings(
            "alice",
            json!({"blocked_words": ["idiot"], "blocked_mode": "mask"}),
        )
        .await;
    assert_eq!(status, 200);
    put_designs(&app, tts(Some("5"))).await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;

    let (status, _) = app
        .publish(
            json!({"receiver": "alice", "from": "Ana", "amount": {"value": "10", "currency": "BRL"},
                        "message": "you idiot, see https://spam.example.com now"}),
        )
        .await;
    assert_eq!(status, 202);
    let frame = w.next_json().await;
    let text = frame["speech"]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no speech: {frame}"));
    assert!(text.starts_with("Ana. you"), "{text}");
    for gone in ["idiot", "*", "http", "spam"] {
        assert!(!text.contains(gone), "{gone:?} is read out: {text}");
    }
    let url = frame["speech"]["url"].as_str().unwrap();
    let (status, audio) = speech_of(&app, url).await;
    assert_eq!(status, 200);
    assert_eq!(&audio[..4], b"RIFF", "a WAV");
    let size = u32::from_le_bytes(audio[4..8].try_into().unwrap()) as usize;
    assert_eq!(
        size,
        audio.len() - 8,
        "its sizes set from what the engine wrote"
    );
    assert!(
        audio.len() > 20_000,
        "a second or more of speech: {} bytes",
        audio.len()
    );
    let id = frame["alert"]["id"].as_str().unwrap().to_owned();
    w.show(&id).await;

    // Below the least amount read out, and with no amount: shown, not read.
    for amount in [json!({"value": "4.99", "currency": "BRL"}), Value::Null] {
        let (status, _) = app
            .publish(json!({"receiver": "alice", "from": "Bia", "amount": amount, "message": "oi"}))
            .await;
        assert_eq!(status, 202);
        let frame = w.next_json().await;
        assert!(frame.get("speech").is_none(), "{frame}");
        w.show(frame["alert"]["id"].as_str().unwrap()).await;
    }
    // A key this node never made.
    assert_eq!(speech_of(&app, "/speech/00ff").await.0, 404);
}

#[actix_web::test]
async fn a_broken_engine_gives_no_speech_and_holds_nothing() {
    a_broken_engine_holds_nothing_on(None).await;
}

#[actix_web::test]
async fn a_broken_engine_gives_no_speech_and_holds_nothing_on_redis() {
    let redis = RedisServer::spawn().await;
    a_broken_engine_holds_nothing_on(Some(redis.url())).await;
}

async fn a_broken_engine_holds_nothing_on(redis_url: Option<String>) {
    let mut args = serve_args(redis_url);
    args.tts_command = Some("false".into());
    let app = TestApp::spawn(args).await;
    put_designs(&app, tts(None)).await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let first = app.publish_alert("alice", "first").await;
    let second = app.publish_alert("alice", "second").await;
    let frame = w.next_json().await;
    assert_eq!(frame["alert"]["id"], first.as_str());
    let url = frame["speech"]["url"].as_str().unwrap();
    let (status, body) = speech_of(&app, url).await;
    assert_eq!(status, 503);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "speech_unavailable", "{error}");
    w.show(&first).await;
    assert_eq!(w.next_alert().await.0, second, "the queue goes on");
    // Its history says it was shown without speech, and why.
    let (status, body) = app.get("/receivers/alice/history", Some(PUBLISH_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let entry = &body["history"][0];
    assert_eq!(entry["id"], first.as_str(), "{body}");
    assert_eq!(
        trail_of(entry),
        ["received", "sent", "started", "speech_failed", "done"],
        "{entry}"
    );
}

/// An engine slower than the limit: the alert plays without speech, and its history says the
/// engine took too long.
#[actix_web::test]
async fn a_slow_engine_is_cut_off_and_the_history_says_so() {
    let mut args = serve_args(None);
    args.tts_command = Some("sleep 30".into());
    let app = TestApp::spawn(args).await;
    put_designs(&app, tts(None)).await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let first = app.publish_alert("alice", "first").await;
    let frame = w.next_json().await;
    // Started as it shows; its speech is asked for after (a widget plays it after the sound).
    w.started(&first).await;
    let url = frame["speech"]["url"].as_str().unwrap();
    let asked = std::time::Instant::now();
    let (status, _) = speech_of(&app, url).await;
    assert_eq!(status, 503);
    assert!(asked.elapsed() < PROMPTLY, "cut off at the limit");
    w.done(&first).await;
    eventually(|| async {
        let (_, body) = app.get("/receivers/alice/history", Some(PUBLISH_KEY)).await;
        body["history"][0]["id"] == first.as_str()
    })
    .await;
    let (_, body) = app.get("/receivers/alice/history", Some(PUBLISH_KEY)).await;
    assert_eq!(
        trail_of(&body["history"][0]),
        ["received", "sent", "started", "speech_timed_out", "done"],
        "{body}"
    );
}
