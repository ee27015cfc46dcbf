//! The widget page in real headless Chromium (Debian's `chromium`), driven over the Chrome
//! DevTools Protocol: the order it shows alerts in, donor text that must stay text, and coming
//! back after the node restarts.
//!
//! The DevTools client is a few lines over the WebSocket client the other tests use, rather than
//! a browser-automation crate: the tests need to open a page, evaluate expressions and watch for
//! dialogs, nothing more.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::helpers::*;

/// A headless Chromium of the test's own, killed with its profile when dropped.
struct Chromium {
    child: Child,
    profile: PathBuf,
    endpoint: String,
}

impl Chromium {
    fn launch() -> Self {
        let profile = std::env::temp_dir().join(format!(
            "cuebox-chromium-{}-{}",
            std::process::id(),
            free_port()
        ));
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--mute-audio",
                "--autoplay-policy=no-user-gesture-required",
                "--hide-scrollbars",
                "--window-size=1280,720",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium runs (scripts/test installs it)");

        // Chromium says where DevTools listens on stderr; keep draining it afterwards so a full
        // pipe can never stall the browser.
        let stderr = child.stderr.take().unwrap();
        let (found, endpoint) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.trim().to_owned());
                }
            }
        });
        let endpoint = endpoint
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed its DevTools endpoint");
        Self {
            child,
            profile,
            endpoint,
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One page of that browser, over one DevTools connection.
struct Page {
    framed: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
    session: String,
    next_id: u64,
    /// Events seen so far, by method name.
    events: Vec<(String, Value)>,
}

impl Page {
    async fn open(browser: &Chromium, url: &str) -> Self {
        let (_, framed) = awc::Client::new()
            .ws(browser.endpoint.as_str())
            .max_frame_size(64 << 20)
            .connect()
            .await
            .expect("DevTools accepts a connection");
        let mut page = Self {
            framed,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
        };
        let target = page
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page.call("Page.enable", json!({})).await;
        page.call("Page.navigate", json!({ "url": url })).await;
        page
    }

    /// Sends a command (to the page once attached) and waits for its answer, keeping the
    /// events that arrive meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.framed
            .send(ws::Message::Text(message.to_string().into()))
            .await
            .expect("DevTools takes a command");
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .unwrap_or_else(|_| panic!("DevTools did not answer {method}"));
            let text = match frame {
                Some(Ok(ws::Frame::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => panic!("DevTools connection ended: {other:?}"),
            };
            let v: Value = serde_json::from_slice(&text).expect("DevTools speaks JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
            if let Some(event) = v["method"].as_str() {
                self.events.push((event.to_owned(), v["params"].clone()));
            }
        }
    }

    /// Evaluates an expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Polls an expression until it is true, failing after `within`.
    async fn wait_for(&mut self, expression: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.eval(expression).await != json!(true) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never made `{expression}` true"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn dialogs(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|(m, _)| m == "Page.javascriptDialogOpening")
            .map(|(_, p)| p)
            .collect()
    }

    /// With `CUEBOX_SCREENSHOT=path` set, saves what the page shows, to look at by eye: a
    /// base64 PNG, as DevTools gives it (`base64 -d path > shot.png`).
    async fn screenshot_if_asked(&mut self) {
        if let Ok(path) = std::env::var("CUEBOX_SCREENSHOT") {
            let shot = self
                .call("Page.captureScreenshot", json!({ "format": "png" }))
                .await;
            std::fs::write(path, shot["data"].as_str().unwrap()).unwrap();
        }
    }
}

/// What the widget shows right now: the visible alert's id, or null.
const VISIBLE: &str = "(() => { const c = document.getElementById('card'); \
                       return c.hidden ? null : (c.dataset.alertId || null); })()";

fn widget_url(app: &TestApp, receiver: &str) -> String {
    format!(
        "{}/widget/{receiver}?token={}",
        app.base,
        app.token(receiver)
    )
}

#[actix_web::test]
async fn the_widget_shows_alerts_one_at_a_time_in_order() {
    let app = TestApp::memory().await;
    let browser = Chromium::launch();
    let mut page = Page::open(&browser, &widget_url(&app, "alice")).await;
    page.wait_for("window.cuebox && window.cuebox.connected", PROMPTLY)
        .await;

    // Record every change of what is on screen, as the page sees it, before anything is sent:
    // each alert must appear, then the card hide, before the next appears.
    page.eval(&format!(
        "window.__seen = []; \
         new MutationObserver(() => {{ \
           const id = {VISIBLE}; \
           if (window.__seen[window.__seen.length - 1] !== id) window.__seen.push(id); \
         }}).observe(document.getElementById('card'), {{ attributes: true }}); \
         window.__seen.push({VISIBLE}); true"
    ))
    .await;
    let mut ids = Vec::new();
    for (from, message) in [("Ana", "first"), ("Bia", "second"), ("Caio", "third")] {
        let (status, body) = app
            .publish(json!({
                "receiver": "alice", "from": from, "message": message, "duration_ms": 1000,
                "amount": { "value": "5.00", "currency": "BRL" }
            }))
            .await;
        assert_eq!(status, 202);
        ids.push(body["id"].as_str().unwrap().to_owned());
    }

    page.wait_for(
        &format!("window.__seen.filter(x => x).length === 3 && {VISIBLE} === null"),
        Duration::from_secs(20),
    )
    .await;
    let expected: Vec<Value> = std::iter::once(Value::Null)
        .chain(ids.iter().flat_map(|id| [json!(id), Value::Null]))
        .collect();
    assert_eq!(
        page.eval("window.__seen").await,
        json!(expected),
        "each alert on screen once, alone, in publish order"
    );
    assert_eq!(page.eval("window.cuebox.shown").await, json!(ids));
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;
    assert_eq!(app.status("alice").await["queued"], 0);
}

#[actix_web::test]
async fn donor_text_is_shown_as_text_and_runs_nothing() {
    let app = TestApp::memory().await;
    let browser = Chromium::launch();
    let mut page = Page::open(&browser, &widget_url(&app, "alice")).await;
    page.wait_for("window.cuebox && window.cuebox.connected", PROMPTLY)
        .await;

    let from = "مرحبا 👋 <b>Ana</b>";
    let message =
        r#"<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script> שלום"#;
    let (_, body) = app
        .publish(json!({
            "receiver": "alice", "from": from, "message": message, "duration_ms": 3000,
            "amount": { "value": "10.50", "currency": "BRL" }
        }))
        .await;
    let id = body["id"].as_str().unwrap();
    page.wait_for(&format!("{VISIBLE} === '{id}'"), PROMPTLY)
        .await;
    // Give an injected onerror time to fire, were there one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    page.screenshot_if_asked().await;

    assert_eq!(
        page.eval("document.getElementById('message').textContent")
            .await,
        json!(message)
    );
    assert_eq!(
        page.eval("document.getElementById('from').textContent")
            .await,
        json!(from)
    );
    assert_eq!(
        page.eval(
            "document.querySelectorAll('#card b, #card script, #card img:not(#image)').length"
        )
        .await,
        json!(0),
        "donor markup became elements"
    );
    assert_eq!(page.eval("typeof window.__pwned").await, json!("undefined"));
    assert_eq!(
        page.eval("[document.documentElement, document.body].map(e => getComputedStyle(e).backgroundColor)")
            .await,
        json!(["rgba(0, 0, 0, 0)", "rgba(0, 0, 0, 0)"]),
        "the page must stay transparent over the stream"
    );
    assert!(
        page.dialogs().is_empty(),
        "a dialog opened: {:?}",
        page.dialogs()
    );
    assert_eq!(
        page.eval("['from','message','amount','kind'].every(i => document.getElementById(i).getAttribute('dir') === 'auto')")
            .await,
        json!(true)
    );
    let amount = page
        .eval("document.getElementById('amount').textContent")
        .await;
    assert!(
        amount
            .as_str()
            .is_some_and(|a| a.contains("10.50") || a.contains("10,50")),
        "amount shown as {amount}"
    );
}

#[actix_web::test]
async fn the_widget_recovers_after_the_server_restarts() {
    let port = free_port();
    let mut args = serve_args(None);
    args.bind = format!("127.0.0.1:{port}");
    let app = TestApp::spawn(args.clone()).await;
    let url = widget_url(&app, "alice");
    let browser = Chromium::launch();
    let mut page = Page::open(&browser, &url).await;
    page.wait_for("window.cuebox && window.cuebox.connected", PROMPTLY)
        .await;

    app.stop().await;
    page.wait_for("window.cuebox.connected === false", PROMPTLY)
        .await;

    // The same port and secret, so the URL in OBS still holds.
    let app = TestApp::spawn(args).await;
    let id = app.publish_alert("alice", "after the restart").await;
    page.wait_for(
        &format!("window.cuebox.shown.includes('{id}')"),
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(page.eval("window.cuebox.connected").await, json!(true));
}
