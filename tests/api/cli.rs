//! The binary as an operator runs it: help, widget URLs, the demo start.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

#[actix_web::test]
async fn help_names_every_flag_with_its_variable() {
    let out = cuebox().args(["serve", "--help"]).output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, var) in [
        ("--bind", "CUEBOX_BIND"),
        ("--redis-url", "CUEBOX_REDIS_URL"),
        ("--key-prefix", "CUEBOX_KEY_PREFIX"),
        ("--publish-key", "CUEBOX_PUBLISH_KEYS"),
        ("--secret", "CUEBOX_SECRET"),
        ("--start-timeout-ms", "CUEBOX_START_TIMEOUT_MS"),
        ("--ack-grace-ms", "CUEBOX_ACK_GRACE_MS"),
        ("--max-queue", "CUEBOX_MAX_QUEUE"),
    ] {
        assert!(
            help.contains(flag) && help.contains(var),
            "{flag} / {var} in:\n{help}"
        );
    }
}

#[actix_web::test]
async fn widget_url_signs_with_the_given_or_the_shared_secret() {
    let out = cuebox()
        .args([
            "widget-url",
            "alice",
            "--secret",
            SECRET,
            "--base-url",
            "https://a.example/",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let token = cuebox::auth::ReceiverTokens::new(SECRET).token(&receiver("alice"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("https://a.example/widget/alice?token={token}")
    );

    // From Redis: the same secret the nodes keep there.
    let redis = RedisServer::spawn().await;
    let mut args = serve_args(Some(redis.url()));
    args.secret = None;
    let app = TestApp::spawn(args).await;
    let out = cuebox()
        .args([
            "widget-url",
            "alice",
            "--redis-url",
            &redis.url(),
            "--base-url",
            &app.base,
        ])
        .output()
        .await
        .unwrap();
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let path = url
        .strip_prefix(&app.base)
        .expect("the URL starts with the base");
    assert_eq!(app.get(path, None).await.0, 200, "{url}");

    // Nothing given, and no data dir where it is looked for: it says what to give.
    let cwd = DataDir::fresh();
    std::fs::create_dir_all(&cwd.0).unwrap();
    let out = cuebox()
        .args(["widget-url", "alice"])
        .current_dir(&cwd.0)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));
}

#[actix_web::test]
async fn a_bare_start_prints_a_publish_key_and_a_working_demo_url() {
    let port = free_port();
    // As a user starts it: in a folder of its own, where it makes ./cuebox-data.
    let cwd = DataDir::fresh();
    std::fs::create_dir_all(&cwd.0).unwrap();
    let (mut child, key, url) = bare_start(&cwd.0, port).await;

    let http = awc::Client::new();
    assert_eq!(http.get(url.as_str()).send().await.unwrap().status(), 200);
    let published = http
        .post(format!("http://127.0.0.1:{port}/publish"))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/json"))
        .send_body(r#"{"receiver":"demo"}"#)
        .await
        .unwrap();
    assert_eq!(published.status(), 202);
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

#[actix_web::test]
async fn sigterm_closes_widgets_with_1012_and_exits_within_10_s() {
    let redis = RedisServer::spawn().await;
    let port = free_port();
    let mut child = cuebox()
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &redis.url(),
        ])
        .args(["--secret", SECRET, "--publish-key", PUBLISH_KEY])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let token = cuebox::auth::ReceiverTokens::new(SECRET).token(&receiver("alice"));
    let url = format!("ws://127.0.0.1:{port}/ws/alice?token={token}");
    let mut w = WidgetClient::connect_when_listening(&url).await;
    assert_eq!(w.next_json().await["type"], "hello");

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    match w.next_within(PROMPTLY).await {
        Some(Incoming::Closed(code)) => assert_eq!(code, Some(1012)),
        other => panic!("expected a close, got {other:?}"),
    }
    // It no longer accepts: a new widget is refused while it drains.
    assert!(WidgetClient::connect(&url).await.is_err());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the node exits within 10 s")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[actix_web::test]
async fn json_logs_name_the_receiver_and_alert_of_each_line() {
    let port = free_port();
    let data = DataDir::fresh();
    let mut child = cuebox()
        .env("CUEBOX_DATA_DIR", &data.0)
        .args([
            "serve",
            "--log-format",
            "json",
            "--bind",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--secret", SECRET, "--publish-key", PUBLISH_KEY])
        .env("CUEBOX_LOG", "cuebox=debug,info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let http = awc::Client::new();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let id = loop {
        let sent = http
            .post(format!("http://127.0.0.1:{port}/publish"))
            .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
            .insert_header(("Content-Type", "application/json"))
            .send_body(r#"{"receiver":"alice"}"#)
            .await;
        if let Ok(mut res) = sent {
            let body: serde_json::Value = res.json().await.unwrap();
            break body["id"].as_str().unwrap().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let found = tokio::time::timeout(PROMPTLY, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).expect("every line is JSON");
            let spans = v["spans"].as_array().cloned().unwrap_or_default();
            if spans
                .iter()
                .any(|s| s["receiver"] == "alice" && s["alert_id"] == id.as_str())
            {
                return v;
            }
        }
        panic!("the log ended");
    })
    .await
    .expect("a line about the alert, with its receiver and id");
    assert!(
        found["level"].is_string() && found["timestamp"].is_string(),
        "{found}"
    );
    let _ = child.start_kill();
}

#[actix_web::test]
async fn a_node_killed_mid_alert_loses_nothing_and_hangs_no_queue() {
    let redis = RedisServer::spawn().await;
    node_killed_mid_alert(&redis.url(), false).await;
}

#[actix_web::test]
async fn on_a_cluster_a_node_killed_mid_alert_loses_nothing_and_hangs_no_queue() {
    let cluster = RedisCluster::spawn().await;
    node_killed_mid_alert(&cluster.seeds(), true).await;
}

async fn node_killed_mid_alert(redis_url: &str, cluster: bool) {
    let mut args = serve_args(Some(redis_url.to_owned()));
    args.redis.cluster = cluster;
    let survivor = TestApp::spawn(args).await;
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut doomed = cuebox()
        .args(["serve", "--bind", &bind, "--redis-url", redis_url])
        .args(["--redis-cluster", if cluster { "true" } else { "false" }])
        .args(["--secret", SECRET, "--publish-key", PUBLISH_KEY])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ws = |r: &str| {
        let token = cuebox::auth::ReceiverTokens::new(SECRET).token(&receiver(r));
        format!("ws://127.0.0.1:{port}/ws/{r}?token={token}")
    };
    let mut alice = WidgetClient::connect_when_listening(&ws("alice")).await;
    let mut bob = WidgetClient::connect(&ws("bob")).await.unwrap();
    alice.next_json().await;
    bob.next_json().await;
    survivor.wait_for_widgets("bob", 1).await;
    survivor.wait_for_widgets("alice", 1).await;
    let a1 = survivor.publish_alert("alice", "for alice").await;
    let b1 = survivor.publish_alert("bob", "for bob").await;
    assert_eq!(alice.next_alert().await.0, a1);
    assert_eq!(bob.next_alert().await.0, b1);
    alice.started(&a1).await;
    bob.started(&b1).await;

    doomed.start_kill().unwrap(); // SIGKILL
    doomed.wait().await.unwrap();
    let killed = tokio::time::Instant::now();

    // Bob's widget reconnects to the surviving node and gets his alert again.
    let mut bob = survivor.widget("bob").await;
    assert_eq!(bob.next_alert().await.0, b1);

    // Alice's never comes back: once the dead node is noticed, her alert is back in the queue.
    eventually_within(Duration::from_secs(30), || async {
        let status = survivor.status("alice").await;
        status["in_flight"].is_null() && status["queued"] == 1
    })
    .await;
    assert!(killed.elapsed() < Duration::from_secs(30));
    let mut alice = survivor.widget("alice").await;
    let (id, attempt, _) = alice.next_alert().await;
    assert_eq!((id.as_str(), attempt), (a1.as_str(), 2));
    // Bob's alert stayed with the widget that came back.
    assert_eq!(survivor.status("bob").await["in_flight"]["id"], b1.as_str());
}

/// A node on `port` logging JSON lines at `filter` to its stderr, read line by line.
fn json_logging_node(
    data: &DataDir,
    port: u16,
    filter: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let mut child = cuebox()
        .env("CUEBOX_DATA_DIR", &data.0)
        .args(["serve", "--log-format", "json"])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--secret", SECRET, "--publish-key", PUBLISH_KEY])
        .env("CUEBOX_LOG", filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

#[actix_web::test]
async fn a_client_sending_junk_is_logged_at_debug_never_at_error() {
    let port = free_port();
    let data = DataDir::fresh();
    let (mut child, mut lines) = json_logging_node(&data, port, "info,cuebox::http::client=debug");
    let junk: [&[u8]; 3] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
    ];
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    for request in junk {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "never listened: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut answer)).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    let mut errors = Vec::new();
    let mut faults = 0;
    let _ = tokio::time::timeout(PROMPTLY, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).expect("every line is JSON");
            if v["level"] == "ERROR" {
                errors.push(line);
            } else if v["target"] == "cuebox::http::client" && v["level"] == "DEBUG" {
                faults += 1;
                if faults == junk.len() {
                    return;
                }
            }
        }
    })
    .await;
    let _ = child.start_kill();
    assert!(errors.is_empty(), "logged at error: {errors:?}");
    assert_eq!(faults, junk.len(), "each piece of junk is logged at debug");
}

#[actix_web::test]
async fn refused_widgets_are_logged_at_warn_once_a_minute_per_receiver() {
    let port = free_port();
    let data = DataDir::fresh();
    let (mut child, mut lines) = json_logging_node(&data, port, "info");
    let ws = format!("ws://127.0.0.1:{port}");
    let _ = WidgetClient::connect_when_listening(&format!("{ws}/ws/demo?token={}", {
        cuebox::auth::ReceiverTokens::new(SECRET).token(&receiver("demo"))
    }))
    .await;
    // A widget retrying a bad token, three times, on the socket and the page; another receiver's
    // once.
    let http = awc::Client::new();
    for receiver in ["alice", "alice", "alice", "bob"] {
        let refused = WidgetClient::connect(&format!("{ws}/ws/{receiver}?token=bad")).await;
        assert!(refused.is_err());
        let page = http
            .get(format!(
                "http://127.0.0.1:{port}/widget/{receiver}?token=bad"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status().as_u16(), 401);
    }
    // A line after them all, to know the log has caught up.
    let _ = http
        .get(format!("http://127.0.0.1:{port}/widget/zed?token=bad"))
        .send()
        .await;
    let mut refused: Vec<String> = Vec::new();
    tokio::time::timeout(PROMPTLY, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).expect("every line is JSON");
            let message = v["message"].as_str().unwrap_or_default();
            if message.starts_with("refused a widget") {
                assert_eq!(v["level"], "WARN", "{v}");
                let receiver = v["receiver"].as_str().unwrap_or_default();
                refused.push(receiver.to_owned());
                if receiver == "zed" {
                    return;
                }
            }
        }
        panic!("the log ended");
    })
    .await
    .expect("the refusals are logged");
    assert_eq!(refused, ["alice", "bob", "zed"]);
    let _ = child.start_kill();
}
