//! The widget page in a real headless Chromium (Debian's `chromium`), driven over the Chrome
//! DevTools Protocol: the order it shows alerts in, donor text that must stay text, and coming
//! back after the node restarts.
//!
//! The DevTools client is a few lines over awc's WebSocket client, which the other tests already
//! use, rather than a browser-automation crate: these tests open a page, evaluate expressions and
//! watch for dialogs, nothing more.
//!
//! `CUEBOX_SCREENSHOT=/tmp/widget.b64 cargo test --test api browser` also saves what the page
//! shows while an alert is up, over a transparent background as OBS composites it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::helpers::*;

/// A cold Chromium start on a loaded machine can take several seconds.
const LAUNCH_WITHIN: Duration = Duration::from_secs(30);
/// Any single DevTools command; none the tests send should come near it.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);
/// How often a waiting test looks at the page again.
const POLL: Duration = Duration::from_millis(40);

/// Tests run in parallel in one process, so each browser needs a profile of its own.
static PROFILES: AtomicU32 = AtomicU32::new(0);

/// A headless Chromium of the test's own, stopped with its profile removed when dropped.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    /// Starts the browser and answers it with its DevTools endpoint.
    async fn launch() -> (Self, String) {
        let profile = std::env::temp_dir().join(format!(
            "cuebox-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("a temp dir for the Chromium profile");
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
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium runs (scripts/test installs it)");
        let stderr = child.stderr.take().expect("a piped stderr");
        // Owned before anything can fail, so that a failed launch still stops the browser.
        let browser = Self { child, profile };

        // Port 0 means only Chromium knows where DevTools listens, and it says so on stderr. The
        // pipe is drained to the end so that a full pipe can never stall the browser.
        let (found, endpoint) = tokio::sync::oneshot::channel::<Result<String, String>>();
        std::thread::spawn(move || {
            let mut found = Some(found);
            let mut said = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if found.is_none() {
                    continue;
                }
                match line.strip_prefix("DevTools listening on ") {
                    Some(url) => {
                        let _ = found.take().unwrap().send(Ok(url.trim().to_owned()));
                    }
                    None if said.len() < 50 => said.push(line),
                    None => {}
                }
            }
            if let Some(found) = found {
                let _ = found.send(Err(said.join("\n")));
            }
        });
        match tokio::time::timeout(LAUNCH_WITHIN, endpoint).await {
            Ok(Ok(Ok(url))) => (browser, url),
            Ok(Ok(Err(said))) => panic!("chromium exited before DevTools listened:\n{said}"),
            Ok(Err(_)) => panic!("chromium's stderr reader went away"),
            Err(_) => {
                panic!("chromium did not say where DevTools listens within {LAUNCH_WITHIN:?}")
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SIGTERM first: Chromium then reaps its own renderer and helper processes, which
        // SIGKILL would leave behind. SIGKILL only if it does not go within a few seconds.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One page in a browser of its own, over one DevTools connection.
struct Page {
    // Declared before the browser so the connection closes before the browser is stopped.
    framed: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
    /// The flattened session of the page's target; empty while talking to the browser itself.
    session: String,
    next_id: u64,
    /// Every event seen so far, as (method, params).
    events: Vec<(String, Value)>,
    _browser: Chromium,
}

impl Page {
    /// Launches a browser, opens `url` in a fresh page, and waits until the widget's script ran.
    async fn open(url: &str) -> Self {
        Self::open_until(
            url,
            "document.readyState === 'complete' && typeof window.cuebox === 'object'",
            "the widget page loads and runs widget.js",
        )
        .await
    }

    /// Launches a browser, opens `url` in a fresh page, and waits until `ready` holds in it.
    async fn open_until(url: &str, ready: &str, what: &str) -> Self {
        let (browser, endpoint) = Chromium::launch().await;
        // CDP replies (screenshots above all) are far beyond awc's default frame limit.
        let (_, framed) = awc::Client::new()
            .ws(endpoint.as_str())
            .max_frame_size(16 << 20)
            .connect()
            .await
            .expect("DevTools accepts a connection");
        let mut page = Self {
            framed,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
            _browser: browser,
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
        page.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        // The size of a 720p OBS canvas, so that the screenshot looks like the stream would.
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        // Injected by DevTools, so the page's CSP does not apply to it. A violation would mean
        // donor text reached the DOM as markup and only the CSP stopped it.
        page.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": CSP_RECORDER }),
        )
        .await;
        let navigated = page.call("Page.navigate", json!({ "url": url })).await;
        assert!(
            navigated.get("errorText").is_none(),
            "the widget page did not load: {navigated}"
        );
        page.wait_for(ready, PROMPTLY, what).await;
        page
    }

    async fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.framed
            .send(ws::Message::Text(message.to_string().into()))
            .await
            .unwrap_or_else(|e| panic!("DevTools did not take {method}: {e}"));
        self.next_id
    }

    /// Sends a command and waits for its answer, keeping the events that arrive meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let message = self.next_message(deadline, method).await;
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
            if let Some(event) = message["method"].as_str() {
                if event == "Page.javascriptDialogOpening" {
                    // An open dialog blocks the page's script, and with it every evaluation after
                    // it; dismiss it so the test can go on and report it.
                    self.send("Page.handleJavaScriptDialog", json!({ "accept": false }))
                        .await;
                }
                self.events
                    .push((event.to_owned(), message["params"].clone()));
            }
        }
    }

    /// The next whole JSON message, put together from continuation frames if need be.
    async fn next_message(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        let mut partial: Vec<u8> = Vec::new();
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("DevTools did not answer {waiting_for} within {ANSWER_WITHIN:?}")
                });
            let whole = match frame {
                Some(Ok(ws::Frame::Text(text))) => text.to_vec(),
                Some(Ok(ws::Frame::Continuation(item))) => match item {
                    actix_http::ws::Item::FirstText(b) | actix_http::ws::Item::FirstBinary(b) => {
                        partial = b.to_vec();
                        continue;
                    }
                    actix_http::ws::Item::Continue(b) => {
                        partial.extend_from_slice(&b);
                        continue;
                    }
                    actix_http::ws::Item::Last(b) => {
                        partial.extend_from_slice(&b);
                        std::mem::take(&mut partial)
                    }
                },
                Some(Ok(ws::Frame::Ping(p))) => {
                    let _ = self.framed.send(ws::Message::Pong(p)).await;
                    continue;
                }
                Some(Ok(ws::Frame::Pong(_) | ws::Frame::Binary(_))) => continue,
                Some(Ok(ws::Frame::Close(reason))) => {
                    panic!("DevTools closed the connection waiting for {waiting_for}: {reason:?}")
                }
                Some(Err(e)) => panic!("DevTools connection failed waiting for {waiting_for}: {e}"),
                None => panic!("DevTools connection ended waiting for {waiting_for}"),
            };
            return serde_json::from_slice(&whole).expect("DevTools speaks JSON");
        }
    }

    /// Evaluates an expression in the page (awaiting it if it is a promise) and returns its
    /// value; `undefined` comes back as null.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(thrown) = result.get("exceptionDetails") {
            panic!("`{expression}` threw: {thrown}");
        }
        result["result"]["value"].clone()
    }

    /// Polls an expression until it is `true`, failing after `within` with what the page says.
    async fn wait_for(&mut self, expression: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        while self.eval(expression).await != json!(true) {
            if Instant::now() >= deadline {
                let state = self
                    .eval("JSON.stringify([window.cuebox, document.body && document.body.dataset])")
                    .await;
                panic!(
                    "{what}: not within {within:?}\npage state: {state}\npage console:\n{}",
                    self.console().join("\n")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn events(&self, method: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, params)| params)
            .collect()
    }

    /// What the page logged and threw, for failure messages.
    fn console(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(method, params)| match method.as_str() {
                "Runtime.consoleAPICalled" => Some(format!(
                    "console.{}: {}",
                    params["type"].as_str().unwrap_or("?"),
                    params["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| a
                            .get("value")
                            .or(a.get("description"))
                            .map(Value::to_string)
                            .unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" ")
                )),
                "Runtime.exceptionThrown" => Some(format!(
                    "uncaught: {}",
                    params["exceptionDetails"]["exception"]["description"]
                        .as_str()
                        .or(params["exceptionDetails"]["text"].as_str())
                        .unwrap_or("?")
                )),
                _ => None,
            })
            .collect()
    }

    fn assert_no_uncaught_errors(&self) {
        let thrown = self.events("Runtime.exceptionThrown");
        assert!(
            thrown.is_empty(),
            "the page threw: {}",
            self.console().join("\n")
        );
    }

    /// With `CUEBOX_SCREENSHOT=path` set, saves what the page shows, its background left
    /// transparent as in OBS, to look at by eye: base64 PNG as DevTools sends it
    /// (`base64 -d path > shot.png`).
    async fn screenshot_if_asked(&mut self) {
        let Ok(path) = std::env::var("CUEBOX_SCREENSHOT") else {
            return;
        };
        self.call(
            "Emulation.setDefaultBackgroundColorOverride",
            json!({ "color": { "r": 0, "g": 0, "b": 0, "a": 0 } }),
        )
        .await;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = shot["data"].as_str().expect("screenshot data");
        std::fs::write(&path, png).expect("the screenshot is written");
        eprintln!("screenshot saved to {path}");
    }
}

fn widget_url(app: &TestApp, receiver: &str) -> String {
    format!(
        "{}/widget/{receiver}?token={}",
        app.base,
        app.token(receiver)
    )
}

/// Records Content-Security-Policy violations into `window.__csp`.
const CSP_RECORDER: &str = "window.__csp = []; \
    document.addEventListener('securitypolicyviolation', \
      (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));";

const CONNECTED: &str =
    "window.cuebox.connected === true && document.body.dataset.connected === 'true'";

/// What the page shows right now: which card elements exist and are visible, the id on the card
/// when one is, and the donor name on it. Installed as `window.__state`, with a recorder that
/// logs every change of it into `window.__changes`.
///
/// The recorder is a MutationObserver because sampling alone could miss a short alert on a slow
/// machine; observer callbacks run after each task, so they see every state the page could
/// paint. The test samples as well, to check states at arbitrary moments.
const RECORDER: &str = r#"(() => {
  const stage = document.getElementById('stage');
  window.__state = () => {
    const cards = [...document.querySelectorAll('.alert, [data-alert-id]')];
    const visible = cards.filter((c) => !c.hidden && getComputedStyle(c).display !== 'none');
    const card = document.getElementById('card');
    return {
      cards: cards.length,
      visible: visible.length,
      id: visible.length ? (card.dataset.alertId || null) : null,
      from: (document.querySelector('#title .hl') || { textContent: '' }).textContent,
      t: performance.now(),
    };
  };
  window.__changes = [window.__state()];
  new MutationObserver(() => {
    const now = window.__state();
    const last = window.__changes[window.__changes.length - 1];
    if (now.id !== last.id || now.visible !== last.visible || now.cards !== last.cards) {
      window.__changes.push(now);
    }
  }).observe(stage, { attributes: true, childList: true, subtree: true, characterData: true });
  return true;
})()"#;

#[actix_web::test]
async fn the_widget_shows_alerts_one_at_a_time_in_order() {
    let app = TestApp::memory().await;
    let mut page = Page::open(&widget_url(&app, "alice")).await;
    page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
        .await;
    assert_eq!(page.eval(RECORDER).await, json!(true));

    let donors = [("Ana", "first"), ("Bia", "second"), ("Caio", "third")];
    let mut ids = Vec::new();
    for (from, message) in donors {
        let (status, body) = app
            .publish(json!({
                "receiver": "alice", "from": from, "message": message, "duration_ms": 1000,
                "amount": { "value": "5.00", "currency": "BRL" }
            }))
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let from_of = |id: &str| {
        ids.iter()
            .position(|i| i == id)
            .map(|n| donors[n].0)
            .unwrap_or_else(|| panic!("the page showed an id never published: {id}"))
    };

    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sample = page
            .eval("({ ...__state(), shown: cuebox.shown.length, current: cuebox.current })")
            .await;
        let finished = sample["shown"].as_u64() >= Some(3)
            && sample["visible"] == 0
            && sample["current"].is_null();
        samples.push(sample);
        if finished {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "three 1 s alerts were not all shown within 20 s; last state {}\n{}",
            samples.last().unwrap(),
            page.console().join("\n")
        );
        tokio::time::sleep(POLL).await;
    }

    let changes = page.eval("window.__changes").await;
    let changes = changes.as_array().unwrap();
    for state in samples.iter().chain(changes) {
        assert_eq!(state["cards"], 1, "one card element, always: {state}");
        assert!(
            state["visible"].as_u64() <= Some(1),
            "two cards visible: {state}"
        );
        if let Some(id) = state["id"].as_str() {
            assert_eq!(
                state["from"],
                from_of(id),
                "the card's text is its alert's: {state}"
            );
        }
    }
    let seen: Vec<Value> = changes.iter().map(|s| s["id"].clone()).collect();
    let expected: Vec<Value> = std::iter::once(Value::Null)
        .chain(ids.iter().flat_map(|id| [json!(id), Value::Null]))
        .collect();
    assert_eq!(
        seen, expected,
        "each alert on screen once, alone, in publish order, the card hidden in between"
    );
    // The card only hides when the alert's time is up, so each must have stayed up about 1 s.
    for pair in changes.windows(2).filter(|p| p[0]["id"].is_string()) {
        let up = pair[1]["t"].as_f64().unwrap() - pair[0]["t"].as_f64().unwrap();
        assert!(up >= 900.0, "{} was up for only {up:.0} ms", pair[0]["id"]);
    }
    // Sampling may miss a state the recorder saw, but what it did see must agree: in order.
    let mut sampled: Vec<&str> = samples.iter().filter_map(|s| s["id"].as_str()).collect();
    sampled.dedup();
    let mut rest = ids.iter();
    assert!(
        sampled.iter().all(|s| rest.any(|id| id == s)),
        "sampled out of order: {sampled:?}, published {ids:?}"
    );
    eprintln!(
        "{} samples saw {} of 3 alerts; the recorder saw every change",
        samples.len(),
        sampled.len()
    );

    assert_eq!(page.eval("window.cuebox.shown").await, json!(ids));
    page.assert_no_uncaught_errors();
    eventually(|| async {
        let status = app.status("alice").await;
        status["queued"] == 0 && status["in_flight"].is_null()
    })
    .await;
}

#[actix_web::test]
async fn donor_text_is_shown_as_text_and_runs_nothing() {
    let app = TestApp::memory().await;
    let mut page = Page::open(&widget_url(&app, "alice")).await;
    page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
        .await;

    let alerts = [
        // Markup, and a handler that would open a dialog.
        json!({
            "receiver": "alice", "from": "<b>bold</b>", "message": "<img src=x onerror=alert(1)>",
            "duration_ms": 2000
        }),
        // Right-to-left text, emoji, and handlers that would leave a mark rather than a dialog.
        json!({
            "receiver": "alice", "from": "مرحبا 👋 <b>x</b>",
            "message": concat!(
                r#"<img src=x onerror="window.__pwned=1">"#,
                "<script>window.__pwned=2</script> שלום 🎉"
            ),
            "amount": { "value": "10.50", "currency": "BRL" }, "duration_ms": 3000
        }),
    ];
    let mut ids = Vec::new();
    for alert in &alerts {
        let (status, body) = app.publish(alert.clone()).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }

    for (alert, id) in alerts.iter().zip(&ids) {
        page.wait_for(
            &format!(
                "window.cuebox.current === '{id}' && !document.getElementById('card').hidden \
                 && getComputedStyle(document.getElementById('card')).opacity === '1'"
            ),
            PROMPTLY,
            &format!("alert {id} is shown"),
        )
        .await;
        let shown = page
            .eval(
                r#"(() => {
                  const card = document.getElementById('card');
                  const filled = [...document.querySelectorAll('#title .hl')];
                  return {
                    from: filled[0].textContent,
                    message: document.getElementById('body').textContent,
                    fromChildren: filled[0].children.length,
                    messageChildren: document.getElementById('body').children.length,
                    injected: document.querySelectorAll(
                      'img[src="x"], #card b, #card script, #card img:not(#image)').length,
                    cardImages: card.querySelectorAll('img').length,
                    dirs: ['title', 'body']
                      .map((id) => document.getElementById(id).getAttribute('dir')),
                    fromDirection: getComputedStyle(document.getElementById('title')).direction,
                    amount: filled.length > 1 ? filled[1].textContent : '',
                  };
                })()"#,
            )
            .await;
        assert_eq!(shown["from"], alert["from"], "{shown}");
        assert_eq!(shown["message"], alert["message"], "{shown}");
        assert_eq!(
            (&shown["fromChildren"], &shown["messageChildren"]),
            (&json!(0), &json!(0)),
            "donor text became elements: {shown}"
        );
        assert_eq!(
            shown["injected"], 0,
            "donor markup became elements: {shown}"
        );
        assert_eq!(
            shown["cardImages"], 1,
            "only the widget's own #image: {shown}"
        );
        assert_eq!(shown["dirs"], json!(["auto", "auto"]), "{shown}");
        if alert.get("amount").is_some() {
            assert_eq!(shown["fromDirection"], "rtl", "Arabic first: {shown}");
            let amount = shown["amount"].as_str().unwrap_or_default();
            assert!(
                amount.contains("10.50") || amount.contains("10,50"),
                "amount shown as {amount:?}"
            );
            page.screenshot_if_asked().await;
        }
    }

    // By the time both have run their course, any injected handler would have fired.
    page.wait_for(
        "window.cuebox.shown.length === 2 && window.cuebox.current === null \
         && document.getElementById('card').hidden",
        PROMPTLY,
        "both alerts finish",
    )
    .await;
    assert_eq!(page.eval("window.cuebox.shown").await, json!(ids));
    assert_eq!(page.eval("typeof window.__pwned").await, json!("undefined"));
    assert_eq!(
        page.eval("window.__csp").await,
        json!([]),
        "nothing the CSP had to stop"
    );
    let dialogs = page.events("Page.javascriptDialogOpening");
    assert!(dialogs.is_empty(), "a dialog opened: {dialogs:?}");
    assert_eq!(
        page.eval(
            "[document.documentElement, document.body]\
             .map((e) => getComputedStyle(e).backgroundColor)"
        )
        .await,
        json!(["rgba(0, 0, 0, 0)", "rgba(0, 0, 0, 0)"]),
        "the page must stay transparent over the stream"
    );
    page.assert_no_uncaught_errors();
    eventually(|| async {
        let status = app.status("alice").await;
        status["queued"] == 0 && status["in_flight"].is_null()
    })
    .await;
}

/// A node on a port of its own with alice's widget page open and connected, then the node
/// stopped: its arguments, to start it again on the same port, the port, and the page.
async fn a_connected_page_whose_node_stops() -> (cuebox::config::ServeArgs, u16, Page) {
    let port = free_port();
    let mut args = serve_args(None);
    args.bind = format!("127.0.0.1:{port}");
    let app = TestApp::spawn(args.clone()).await;
    let mut page = Page::open(&widget_url(&app, "alice")).await;
    page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
        .await;
    app.stop().await;
    (args, port, page)
}

#[actix_web::test]
async fn the_widget_recovers_after_the_server_restarts() {
    let (args, port, mut page) = a_connected_page_whose_node_stops().await;
    page.wait_for(
        "window.cuebox.connected === false && document.body.dataset.connected === 'false'",
        PROMPTLY,
        "the widget notices the node went away",
    )
    .await;
    let down = Instant::now();

    // The same port and secret, so the URL in OBS still holds. The old listener is closed once
    // stop returns; the wait only covers a slow release by the kernel.
    port_free(port).await;
    let app = TestApp::spawn(args).await;
    let id = app.publish_alert("alice", "after the restart").await;
    page.wait_for(
        &format!("window.cuebox.shown.includes('{id}')"),
        Duration::from_secs(40),
        "the widget reconnects and shows an alert published after the restart",
    )
    .await;
    eprintln!(
        "the widget was back {:?} after the node went down",
        down.elapsed()
    );
    page.wait_for(CONNECTED, PROMPTLY, "the widget says it is connected")
        .await;
    assert_eq!(page.eval("window.cuebox.shown").await, json!([id]));
}

/// What a streamer would see on stream: any text at all on the page, and whether the card shows.
const NOTHING_SHOWN: &str = "document.body.innerText.trim() === '' && \
    document.getElementById('card').hidden === true";

#[actix_web::test]
async fn a_widget_with_a_bad_token_shows_nothing_and_says_why_in_the_console() {
    let app = TestApp::memory().await;
    let mut page = Page::open(&format!("{}/widget/alice?token=not-a-token", app.base)).await;
    page.wait_for(
        "window.cuebox && window.cuebox.refused === 'token'",
        PROMPTLY,
        "the page sees it was refused",
    )
    .await;
    assert_eq!(page.eval(NOTHING_SHOWN).await, json!(true));
    // It does not keep knocking: no socket was even tried, so no widget is counted and an
    // alert for the receiver stays queued.
    app.publish_alert("alice", "for a real widget").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(page.eval(NOTHING_SHOWN).await, json!(true));
    assert_eq!(app.status("alice").await["widgets"], 0);
    let said = page.console().join("\n");
    assert!(
        said.contains("does not open receiver") && said.contains("30 s"),
        "{said}"
    );
    page.assert_no_uncaught_errors();
}

/// The bug this guards against: a node set up again with another secret refused the widget in
/// OBS, and after a reload the refusal's JSON text was on stream.
#[actix_web::test]
async fn a_widget_whose_token_stops_working_clears_the_stage_and_waits_quietly() {
    let (mut args, port, mut page) = a_connected_page_whose_node_stops().await;

    port_free(port).await;
    args.secret = Some("another-secret".into());
    let app = TestApp::spawn(args).await;
    page.wait_for(
        "window.cuebox.refused === 'token'",
        Duration::from_secs(20),
        "the widget learns its token no longer opens the receiver",
    )
    .await;
    app.publish_alert("alice", "not for this widget").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(page.eval(NOTHING_SHOWN).await, json!(true));
    assert_eq!(page.eval("window.cuebox.shown").await, json!([]));
    page.assert_no_uncaught_errors();
}

/// The README's quick start across a restart, as a self-hoster does it: `cuebox` started bare
/// in a folder, the printed widget URL open in a browser, the node stopped and started again.
/// The same key publishes, and the open widget comes back by itself and shows what was queued.
#[actix_web::test]
async fn the_quick_start_keeps_its_key_url_and_queue_across_a_restart() {
    let cwd = DataDir::fresh();
    std::fs::create_dir_all(&cwd.0).unwrap();
    let port = free_port();
    let (mut node, key, url) = bare_start(&cwd.0, port).await;
    let mut page = Page::open(&url).await;
    page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
        .await;
    let base = format!("http://127.0.0.1:{port}");
    let first = publish_with(&base, &key, "before the restart").await;
    page.wait_for(
        &format!("window.cuebox.shown.includes('{first}')"),
        PROMPTLY,
        "the first alert shows",
    )
    .await;
    node.start_kill().unwrap();
    let _ = node.wait().await;
    page.wait_for(
        "window.cuebox.connected === false",
        PROMPTLY,
        "the widget notices the node went away",
    )
    .await;

    port_free(port).await;
    let (_node, key_again, url_again) = bare_start(&cwd.0, port).await;
    assert_eq!((&key_again, &url_again), (&key, &url));
    // `cuebox widget-url` in the same folder, while the node runs, signs the same URL.
    let printed = tokio::process::Command::new(env!("CARGO_BIN_EXE_cuebox"))
        .args([
            "widget-url",
            "demo",
            "--base-url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env_remove("CUEBOX_SECRET")
        .env_remove("CUEBOX_REDIS_URL")
        .env_remove("CUEBOX_DATA_DIR")
        .current_dir(&cwd.0)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout).trim(),
        url,
        "{printed:?}"
    );
    // Queued while the widget is still away, then shown, in order, once it is back.
    let queued = [
        publish_with(&base, &key, "queued one").await,
        publish_with(&base, &key, "queued two").await,
    ];
    page.wait_for(
        &format!("window.cuebox.shown.includes('{}')", queued[1]),
        Duration::from_secs(40),
        "the widget reconnects by itself and shows the queued alerts",
    )
    .await;
    assert_eq!(
        page.eval("window.cuebox.shown").await,
        json!([first, queued[0], queued[1]])
    );
    page.assert_no_uncaught_errors();
}

/// A client of its own each time: a pooled connection to the killed node would be reset.
async fn publish_with(base: &str, key: &str, message: &str) -> String {
    let mut res = awc::Client::new()
        .post(format!("{base}/publish"))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/json"))
        .send_body(
            json!({ "receiver": "demo", "message": message, "duration_ms": 1000 }).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let body: Value = res.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// The streamer's controls as the widget on stream sees them: a skip takes the alert off at once
/// and the next comes on; a rotated widget token clears the stage, and the page goes quiet.
#[actix_web::test]
async fn a_skip_takes_the_alert_off_at_once_and_a_rotated_token_clears_the_stage() {
    let app = TestApp::memory().await;
    let mut page = Page::open(&widget_url(&app, "alice")).await;
    page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
        .await;
    let mut ids = Vec::new();
    for from in ["Ana", "Bia"] {
        let (status, body) = app
            .publish(json!({"receiver": "alice", "from": from, "duration_ms": 60000}))
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    page.wait_for(
        &format!("window.cuebox.current === '{}'", ids[0]),
        PROMPTLY,
        "the first alert shows",
    )
    .await;
    let (status, body) = app
        .control(&format!("/receivers/alice/skip?id={}", ids[0]), None)
        .await;
    assert_eq!(status, 200, "{body}");
    // A 60 s alert gone within the wait: only the skip could have taken it off.
    page.wait_for(
        &format!(
            "window.cuebox.current === '{}' && window.cuebox.skipped.includes('{}') && \
             document.getElementById('card').dataset.alertId === '{}'",
            ids[1], ids[0], ids[1]
        ),
        PROMPTLY,
        "the skipped alert goes and the next comes on",
    )
    .await;

    let (status, body) = app.control("/receivers/alice/tokens/rotate", None).await;
    assert_eq!(status, 200, "{body}");
    page.wait_for(
        "window.cuebox.refused === 'token' && window.cuebox.current === null",
        PROMPTLY,
        "the widget learns its token was rotated",
    )
    .await;
    assert_eq!(page.eval(NOTHING_SHOWN).await, json!(true));
    page.assert_no_uncaught_errors();
}

/// Alice's dock, loaded and showing what it read.
async fn open_dock(app: &TestApp) -> Page {
    let token = app.dashboard_token("alice");
    Page::open_until(
        &format!("{}/dock/alice?token={token}", app.base),
        "typeof window.cueboxDock === 'object' && window.cueboxDock.reads >= 1",
        "the dock loads and reads the receiver",
    )
    .await
}

/// The dock as a streamer uses it in OBS: it shows the receiver, warns while alerts wait and no
/// widget is connected, and its buttons pause, queue a test alert and clear, each change read
/// back from the node. Donor text in the queue is text.
#[actix_web::test]
async fn the_dock_pauses_tests_and_clears_and_warns_when_no_widget_is_connected() {
    let app = TestApp::memory().await;
    let token = app.dashboard_token("alice");
    let mut page = Page::open_until(
        &format!("{}/dock/alice?token={token}", app.base),
        "typeof window.cueboxDock === 'object' && window.cueboxDock.reads >= 1",
        "the dock loads and reads the receiver",
    )
    .await;
    assert_eq!(page.eval("window.cueboxDock.paused").await, json!(false));
    assert_eq!(
        page.eval("document.getElementById('warning').hidden").await,
        json!(true)
    );

    let hostile = "<img src=x onerror=\"window.__pwned=1\">Ana";
    page.wait_for(
        "window.cueboxDock.live",
        PROMPTLY,
        "the dock's feed is open",
    )
    .await;
    app.publish(json!({"receiver": "alice", "from": hostile, "message": "hi"}))
        .await;
    app.publish_alert("alice", "second").await;
    let click = |id: &str| format!("document.getElementById('{id}').click(), true");
    // No click on ↻: the dock hears of them from its feed.
    page.wait_for(
        "window.cueboxDock.queued === 2 && !document.getElementById('warning').hidden",
        PROMPTLY,
        "the dock lists two waiting alerts and warns that no widget is connected",
    )
    .await;
    let first_item = page
        .eval("document.querySelector('#queue li').textContent")
        .await;
    assert!(
        first_item.as_str().unwrap().contains(hostile),
        "{first_item}"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#queue img').length + (window.__pwned || 0)")
            .await,
        json!(0),
        "donor text in the dock is text"
    );

    page.eval(&click("pause")).await;
    page.wait_for(
        "window.cueboxDock.paused === true && document.body.dataset.paused === 'true' && \
         document.getElementById('pause').textContent === 'Resume'",
        PROMPTLY,
        "a click on pause pauses the receiver",
    )
    .await;
    page.screenshot_if_asked().await;
    assert_eq!(app.status("alice").await["paused"], true);

    page.eval(&click("test")).await;
    page.wait_for(
        "window.cueboxDock.queued === 3",
        PROMPTLY,
        "a test alert is queued",
    )
    .await;
    // Clearing asks for a second click.
    page.eval(&click("clear")).await;
    assert_eq!(app.status("alice").await["queued"], 3);
    page.eval(&click("clear")).await;
    page.wait_for(
        "window.cueboxDock.queued === 0",
        PROMPTLY,
        "the queue is cleared",
    )
    .await;
    page.eval(&click("pause")).await;
    page.wait_for("window.cueboxDock.paused === false", PROMPTLY, "resumed")
        .await;
    page.assert_no_uncaught_errors();
    assert_eq!(page.eval("window.__csp.length").await, json!(0));

    // The widget token opens no dock.
    let (status, _) = app
        .get(&format!("/dock/alice?token={}", app.token("alice")), None)
        .await;
    assert_eq!(status, 401);
}

/// The dock's lists in OBS: a held alert approved with a click goes out to the widget, and an
/// alert from history replayed with a click goes out again under a new id.
#[actix_web::test]
async fn the_dock_approves_a_held_alert_onto_a_widget_and_replays_one_from_history() {
    let app = TestApp::memory().await;
    let (status, _) = app
        .put_settings("alice", json!({"hold_for_approval": true}))
        .await;
    assert_eq!(status, 200);
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let (_, body) = app
        .publish(json!({"receiver": "alice", "from": "Bia", "message": "hold me"}))
        .await;
    assert_eq!(body["held"], true, "{body}");
    let held = body["id"].as_str().unwrap().to_owned();
    let token = app.dashboard_token("alice");
    let mut page = Page::open_until(
        &format!("{}/dock/alice?token={token}", app.base),
        "typeof window.cueboxDock === 'object' && window.cueboxDock.held.length === 1",
        "the dock lists the held alert",
    )
    .await;
    w.expect_silence(Duration::from_millis(200)).await;
    page.eval("document.querySelector('#held button[data-action=approve]').click(), true")
        .await;
    assert_eq!(
        w.next_alert().await.0,
        held,
        "approved in the dock, shown by the widget"
    );
    let started = json!({"type": "started", "id": held}).to_string();
    w.send_raw(ws::Message::Text(started.into())).await;
    page.wait_for(
        "window.cueboxDock.progress > 0 && !document.getElementById('progress').hidden",
        PROMPTLY,
        "the dock shows the alert on screen's progress",
    )
    .await;
    w.show(&held).await;
    eventually(|| async { app.status("alice").await["in_flight"].is_null() }).await;

    // No click: the dock hears it from its live feed.
    page.wait_for(
        &format!(
            "window.cueboxDock.live && window.cueboxDock.events >= 4 && \
             window.cueboxDock.history.length === 1 && window.cueboxDock.history[0].id === '{held}' \
             && window.cueboxDock.history[0].status === 'done'"
        ),
        PROMPTLY,
        "the dock's history shows the alert done",
    )
    .await;
    page.screenshot_if_asked().await;
    page.eval("document.querySelector('#history button[data-action=replay]').click(), true")
        .await;
    let (id, _, alert) = w.next_alert().await;
    assert_ne!(id, held);
    assert_eq!(
        (&alert["replay_of"], &alert["message"]),
        (&json!(held), &json!("hold me"))
    );
    page.assert_no_uncaught_errors();
    assert_eq!(page.eval("window.__csp.length").await, json!(0));
}

/// Serves one SVG image to any GET, on a port of its own, for as long as the test runs: an image
/// as large as `width` x `height` with nothing to fetch beyond it.
async fn image_server(width: u32, height: u32) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 40 30"><rect width="40" height="30" rx="4" fill="#7a5cff"/><circle cx="20" cy="15" r="9" fill="#ffd35c"/></svg>"##
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Bounded: the test's runtime ends with the test, and this task with it.
        while let Ok((mut socket, _)) = listener.accept().await {
            let svg = svg.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/svg+xml\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    svg.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(svg.as_bytes()).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/image.svg")
}

/// Where the alert is against the canvas, and what the design did to it.
const GEOMETRY: &str = r#"(() => {
  const card = document.getElementById('card').getBoundingClientRect();
  const title = document.getElementById('title');
  const image = document.getElementById('image');
  return {
    inside: card.top >= -1 && card.left >= -1 && card.bottom <= innerHeight + 1
      && card.right <= innerWidth + 1 && card.height > 0,
    card: [card.left, card.top, card.right, card.bottom, innerWidth, innerHeight],
    title: title.textContent,
    titleElements: title.querySelectorAll('*:not(.hl)').length,
    color: getComputedStyle(title).color,
    letterSpacing: getComputedStyle(title).letterSpacing,
    bodyBackground: getComputedStyle(document.body).backgroundColor,
    imageShown: !image.hidden && getComputedStyle(image).display !== 'none',
    imageGap: image.hidden ? 0 : image.getBoundingClientRect().height,
    variation: document.getElementById('card').dataset.variation,
    layout: document.getElementById('card').className,
    loadedOnce: window.__loadedOnce === true,
    pwned: typeof window.__pwned,
  };
})()"#;

async fn put_designs(app: &TestApp, body: Value) {
    let (status, answer) = app.put_designs("alice", &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
}

/// Publishes `alert` and waits until the page shows it; answers its geometry. The alert stays a
/// minute, so a slow machine still measures it on screen (at 1 s a loaded CI machine missed it);
/// once measured it is skipped, and the next one goes out at once.
async fn shown(app: &TestApp, page: &mut Page, mut alert: Value) -> Value {
    alert["duration_ms"] = json!(60_000);
    let (status, body) = app.publish(alert).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap();
    page.wait_for(
        &format!(
            "window.cuebox.current === '{id}' && window.cuebox.shown.indexOf('{id}') !== -1 \
             && document.getElementById('card').getAnimations()\
                  .every((a) => a.playState === 'finished')"
        ),
        PROMPTLY,
        &format!("alert {id} is shown, its animation in over"),
    )
    .await;
    let geometry = page.eval(GEOMETRY).await;
    let (status, body) = app
        .control(&format!("/receivers/alice/skip?id={id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    geometry
}

#[actix_web::test]
async fn designs_fit_the_canvas_apply_their_css_and_change_without_a_reload() {
    let app = TestApp::memory().await;
    let image = image_server(4000, 3000).await;
    let broken = format!("http://127.0.0.1:{}/broken.gif", free_port());
    let mut page = Page::open(&widget_url(&app, "alice")).await;
    page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
        .await;
    page.eval("window.__loadedOnce = true").await;

    put_designs(
        &app,
        json!({"locale": "pt-BR", "designs": {"donation": {
            "title": "{from} · {data.note} · {amount}", "image": broken,
            "css": ".title { letter-spacing: 7px } body { background: #ff0000 }",
            "variations": [{"name": "big", "when": {"min_amount": {"value": "100", "currency": "BRL"}},
                            "set": {"text_color": "#ff3355"}}]
        }}}),
    )
    .await;
    let long_name = "Ana Beatriz 🎉 مرحبا "
        .repeat(4)
        .chars()
        .take(64)
        .collect::<String>();
    let worst = [
        // A 64-character name, a 500-character message, a large amount: the variation by amount.
        json!({"receiver": "alice", "kind": "donation", "from": long_name,
               "message": "palavra ".repeat(63).chars().take(500).collect::<String>(),
               "amount": {"value": "150.00", "currency": "BRL"},
               "data": {"note": "<img src=x onerror=window.__pwned=1>"}}),
        // Sixty line breaks.
        json!({"receiver": "alice", "kind": "donation", "from": "Bia",
               "message": "oi\n".repeat(60), "amount": {"value": "5", "currency": "BRL"},
               "data": {"note": "x"}}),
    ];
    for (n, alert) in worst.into_iter().enumerate() {
        let g = shown(&app, &mut page, alert).await;
        assert_eq!(g["inside"], true, "alert {n} leaves the canvas: {g}");
        assert_eq!(g["imageShown"], false, "a failed image leaves no gap: {g}");
        assert_eq!(g["letterSpacing"], "7px", "the design's CSS applies: {g}");
        assert_eq!(
            g["bodyBackground"], "rgba(0, 0, 0, 0)",
            "CSS stays in the stage: {g}"
        );
        assert_eq!(g["titleElements"], 0, "template text became elements: {g}");
        if n == 0 {
            assert!(
                g["title"].as_str().unwrap().contains("<img src=x onerror"),
                "{g}"
            );
            assert!(
                g["title"].as_str().unwrap().contains("R$\u{a0}150,00"),
                "pt-BR: {g}"
            );
            assert_eq!(
                (&g["variation"], &g["color"]),
                (&json!("big"), &json!("rgb(255, 51, 85)")),
                "{g}"
            );
        } else {
            assert_eq!(
                (&g["variation"], &g["color"]),
                (&json!(""), &json!("rgb(255, 255, 255)")),
                "{g}"
            );
        }
    }

    // Each layout, with a large image and long right-to-left text, fits; saved for the docs
    // with CUEBOX_SCREENSHOTS=dir.
    for layout in [
        "image_above",
        "image_left",
        "image_right",
        "image_behind",
        "text_only",
    ] {
        put_designs(
            &app,
            json!({"designs": {"default": {"layout": layout, "image": image, "text_color": "#00ff88"}}}),
        )
        .await;
        let g = shown(
            &app,
            &mut page,
            json!({"receiver": "alice", "kind": "raid", "from": long_name,
                   "message": "שלום לכולם! 🎉 ".repeat(12)}),
        )
        .await;
        assert_eq!(g["inside"], true, "{layout} leaves the canvas: {g}");
        assert_eq!(
            g["color"], "rgb(0, 255, 136)",
            "the new design, no reload: {g}"
        );
        assert_eq!(g["loadedOnce"], true, "the page was reloaded: {g}");
        assert!(g["layout"].as_str().unwrap().contains(layout), "{g}");
        assert_eq!(g["imageShown"], layout != "text_only", "{layout}: {g}");
        if let Ok(dir) = std::env::var("CUEBOX_SCREENSHOTS") {
            page.call(
                "Emulation.setDefaultBackgroundColorOverride",
                json!({ "color": { "r": 40, "g": 44, "b": 52, "a": 1 } }),
            )
            .await;
            let shot = page
                .call("Page.captureScreenshot", json!({ "format": "png" }))
                .await;
            let png = shot["data"].as_str().expect("screenshot data");
            use base64::Engine;
            let png = base64::engine::general_purpose::STANDARD
                .decode(png)
                .unwrap();
            std::fs::write(format!("{dir}/layout-{layout}.png"), png).unwrap();
        }
    }
    assert_eq!(page.eval("typeof window.__pwned").await, json!("undefined"));
    assert_eq!(
        page.eval("window.__csp").await,
        json!([]),
        "nothing the CSP had to stop"
    );
    page.assert_no_uncaught_errors();
}

/// OBS's browser-source events, dispatched in the page as OBS does.
fn obs_event(name: &str, field: &str, value: bool) -> String {
    format!(
        "window.dispatchEvent(new CustomEvent('{name}', {{ detail: {{ {field}: {value} }} }})), true"
    )
}

#[actix_web::test]
async fn widgets_off_air_in_obs_hold_the_queue_silently_and_the_first_on_air_releases_it() {
    let app = TestApp::memory().await;
    let mut live = Page::open(&widget_url(&app, "alice")).await;
    let mut brb = Page::open(&widget_url(&app, "alice")).await;
    for page in [&mut live, &mut brb] {
        page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
            .await;
    }
    app.wait_for_widgets("alice", 2).await;
    // Both scenes go off Program: an audience off air alone.
    for page in [&mut live, &mut brb] {
        page.eval(&obs_event("obsSourceActiveChanged", "active", false))
            .await;
    }
    eventually(|| async { app.status("alice").await["widgets_on_air"] == 0 }).await;
    let (status, body) = app
        .publish(json!({"receiver": "alice", "from": "Ana", "duration_ms": 1000}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let status = app.status("alice").await;
    assert_eq!(
        (&status["queued"], &status["in_flight"]),
        (&json!(1), &Value::Null),
        "held while nobody watches: {status}"
    );

    // The live scene goes back on Program: it releases the alert, and plays its sound; the
    // hidden scene's widget shows it too, silently.
    live.eval(&obs_event("obsSourceActiveChanged", "active", true))
        .await;
    for page in [&mut live, &mut brb] {
        page.wait_for(
            &format!("window.cuebox.shown.indexOf('{id}') !== -1"),
            PROMPTLY,
            "the alert is shown",
        )
        .await;
    }
    assert_eq!(live.eval("window.cuebox.sounds.length").await, json!(1));
    assert_eq!(
        brb.eval("window.cuebox.sounds.length").await,
        json!(0),
        "a widget off air plays no sound"
    );
    // Both say done; the alert completes once.
    eventually(|| async {
        let status = app.status("alice").await;
        status["queued"] == 0 && status["in_flight"].is_null()
    })
    .await;
    // A source hidden everywhere is off air too.
    live.eval(&obs_event("obsSourceVisibleChanged", "visible", false))
        .await;
    eventually(|| async { app.status("alice").await["widgets_on_air"] == 0 }).await;
    live.assert_no_uncaught_errors();
    brb.assert_no_uncaught_errors();
}

#[actix_web::test]
async fn the_widget_reads_an_alert_out_and_a_broken_engine_holds_nothing() {
    for engine in [None, Some("false")] {
        let mut args = serve_args(None);
        args.tts_command = engine.map(str::to_owned);
        let app = TestApp::spawn(args).await;
        put_designs(
            &app,
            json!({"tts": {"enabled": true, "voice": "en", "rate": 300}, "designs": {}}),
        )
        .await;
        let mut page = Page::open(&widget_url(&app, "alice")).await;
        page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
            .await;
        let (status, body) = app
            .publish(
                json!({"receiver": "alice", "from": "Ana", "message": "hello there",
                            "duration_ms": 1000}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        page.wait_for(
            "window.cuebox.shown.length === 1 && window.cuebox.current === null",
            PROMPTLY,
            "the alert is shown and done",
        )
        .await;
        let spoken = page.eval("window.cuebox.spoken").await;
        let played = engine.is_none();
        assert_eq!(spoken[0]["played"], played, "{engine:?}: {spoken}");
        eventually(|| async {
            let status = app.status("alice").await;
            status["queued"] == 0 && status["in_flight"].is_null()
        })
        .await;
        page.assert_no_uncaught_errors();
    }
}

#[actix_web::test]
async fn a_preview_page_shows_alerts_silently_and_releases_none() {
    let app = TestApp::memory().await;
    let mut page = Page::open(&format!("{}&preview=1", widget_url(&app, "alice"))).await;
    page.wait_for(CONNECTED, PROMPTLY, "the preview connects")
        .await;
    let (status, body) = app
        .publish(json!({"receiver": "alice", "from": "Ana", "duration_ms": 1000}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let status = app.status("alice").await;
    assert_eq!(
        (&status["widgets"], &status["in_flight"]),
        (&json!(0), &Value::Null),
        "{status}"
    );
    assert_eq!(page.eval("window.cuebox.shown.length").await, json!(0));
    // A widget joins (OBS's): the alert goes out, and the preview shows it too, silently.
    let mut w = app.widget("alice").await;
    assert_eq!(w.next_alert().await.0, id);
    page.wait_for(
        &format!("window.cuebox.shown.indexOf('{id}') !== -1"),
        PROMPTLY,
        "the preview shows it",
    )
    .await;
    assert_eq!(page.eval("window.cuebox.sounds.length").await, json!(0));
    w.show(&id).await;
    page.assert_no_uncaught_errors();
}

#[actix_web::test]
async fn the_dock_edits_designs_previews_them_with_the_real_widget_and_sends_a_test() {
    let app = TestApp::memory().await;
    let mut page = open_dock(&app).await;
    page.eval("document.getElementById('designs-section').open = true, true")
        .await;
    let frame = "document.getElementById('design-frame').contentWindow";
    page.wait_for(
        &format!(
            "window.cueboxDock.designs.version === 0 && {frame}.cuebox \
             && {frame}.cuebox.connected === true"
        ),
        PROMPTLY,
        "the editor reads the designs and its preview widget connects",
    )
    .await;
    assert_eq!(
        app.status("alice").await["widgets"],
        0,
        "a preview is no widget"
    );

    let designs = json!({"locale": "pt-BR", "designs": {"donation": {
        "title": "{from} testou {amount}", "text_color": "#00ff00",
        "variations": [{"name": "big", "when": {"min_amount": {"value": "100", "currency": "BRL"}},
                        "set": {"text_color": "#ff3355"}}]}}});
    let set = |id: &str, value: &str| {
        format!(
            "(() => {{ const e = document.getElementById('{id}'); e.value = {}; return true; }})()",
            serde_json::to_string(value).unwrap()
        )
    };
    let click = |id: &str| format!("document.getElementById('{id}').click(), true");
    page.eval(&set("designs-json", &designs.to_string())).await;
    page.eval(&set("sample-amount", "150.00")).await;
    page.eval(&click("design-preview")).await;
    page.wait_for(
        &format!(
            "window.cueboxDock.designs.previews === 1 && {frame}.cuebox.current !== null \
             && {frame}.document.getElementById('title').textContent.indexOf('Ana testou') === 0"
        ),
        PROMPTLY,
        "the preview shows the edited design",
    )
    .await;
    let shown = page
        .eval(&format!(
            "(() => {{ const d = {frame}.document; return {{ title: d.getElementById('title').textContent, \
             variation: d.getElementById('card').dataset.variation, \
             color: {frame}.getComputedStyle(d.getElementById('title')).color }}; }})()"
        ))
        .await;
    assert_eq!(shown["variation"], "big", "{shown}");
    assert_eq!(shown["color"], "rgb(255, 51, 85)", "{shown}");
    page.eval("document.getElementById('design-status').scrollIntoView(), true")
        .await;
    page.screenshot_if_asked().await;
    assert!(
        shown["title"].as_str().unwrap().contains("R$\u{a0}150,00"),
        "{shown}"
    );
    let (_, kept) = app.get("/receivers/alice/designs", Some(PUBLISH_KEY)).await;
    assert_eq!(kept["version"], 0, "a preview keeps nothing");

    // A bad colour is refused, naming the field.
    let bad = json!({"designs": {"donation": {"text_color": "green"}}});
    page.eval(&set("designs-json", &bad.to_string())).await;
    page.eval(&click("design-save")).await;
    page.wait_for(
        "(window.cueboxDock.designs.error || '').indexOf('designs.donation.text_color') === 0",
        PROMPTLY,
        "the editor says which field is wrong",
    )
    .await;
    page.eval(&set("designs-json", &designs.to_string())).await;
    page.eval(&click("design-save")).await;
    page.wait_for(
        "window.cueboxDock.designs.saved === 1 && window.cueboxDock.designs.version === 1",
        PROMPTLY,
        "the editor saves",
    )
    .await;
    let (_, kept) = app.get("/receivers/alice/designs", Some(PUBLISH_KEY)).await;
    assert_eq!(
        kept["designs"]["donation"]["title"],
        "{from} testou {amount}"
    );

    // A test of this variation goes through the queue.
    page.eval(&click("design-test")).await;
    page.wait_for(
        "window.cueboxDock.designs.tests === 1",
        PROMPTLY,
        "the test is sent",
    )
    .await;
    let (_, queue) = app.get("/receivers/alice/queue", Some(PUBLISH_KEY)).await;
    let test = &queue["alerts"][0];
    assert_eq!(
        (&test["kind"], &test["amount"]["value"]),
        (&json!("donation"), &json!("150.00")),
        "{queue}"
    );
    page.assert_no_uncaught_errors();
}

#[actix_web::test]
async fn the_gap_between_alerts_holds_on_screen() {
    let mut args = serve_args(None);
    args.alert_gap_ms = 1500;
    let app = TestApp::spawn(args).await;
    let mut page = Page::open(&widget_url(&app, "alice")).await;
    page.wait_for(CONNECTED, PROMPTLY, "the widget connects")
        .await;
    assert_eq!(page.eval(RECORDER).await, json!(true));
    let mut ids = Vec::new();
    for from in ["Ana", "Bia"] {
        let (status, body) = app
            .publish(json!({"receiver": "alice", "from": from, "duration_ms": 1000}))
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    page.wait_for(
        "window.cuebox.shown.length === 2 && window.cuebox.current === null",
        Duration::from_secs(20),
        "both alerts shown",
    )
    .await;
    // The page's own record of what it showed: the first off screen, then the second on.
    let changes = page.eval("window.__changes").await;
    let changes = changes.as_array().unwrap();
    let at = |id: Option<&str>, from: usize| {
        changes[from..]
            .iter()
            .position(|c| c["id"].as_str() == id)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("{id:?} never seen after {from}: {changes:?}"))
    };
    let first_on = at(Some(&ids[0]), 0);
    let first_off = at(None, first_on);
    let second_on = at(Some(&ids[1]), first_off);
    let gap = changes[second_on]["t"].as_f64().unwrap() - changes[first_off]["t"].as_f64().unwrap();
    assert!(gap >= 1400.0, "the gap on screen was {gap:.0} ms");
}

/// The donor's page from a publish's `status_url`: where the alert is and about when it shows,
/// kept current as it moves up, goes on screen and ends; donor-controlled text stays text; a
/// tampered link shows nothing but that it is not valid.
#[actix_web::test]
async fn the_status_page_follows_one_alert_live() {
    let app = TestApp::memory().await;
    let mut w = app.widget("alice").await;
    app.wait_for_widgets("alice", 1).await;
    let (_, ahead) = app
        .publish(json!({"receiver": "alice", "from": "Bo", "duration_ms": 5000}))
        .await;
    let (_, mine) = app
        .publish(json!({"receiver": "alice", "from": "<img src=x onerror=alert(1)>"}))
        .await;
    let (ahead_id, id) = (ahead["id"].as_str().unwrap(), mine["id"].as_str().unwrap());
    assert_eq!(w.next_alert().await.0, ahead_id);
    let url = mine["status_url"].as_str().unwrap();
    let mut page = Page::open_until(
        url,
        "document.body && document.body.dataset.status === 'queued'",
        "the status page reads its alert",
    )
    .await;
    let text = page.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains("in line") && text.contains("1 ahead"),
        "{text}"
    );
    assert!(text.contains("in about"), "{text}");
    assert!(!text.contains(ahead_id), "another alert's id: {text}");
    w.show(ahead_id).await;
    assert_eq!(w.next_alert().await.0, id);
    w.started(id).await;
    page.wait_for(
        "document.body.dataset.status === 'in_flight'",
        PROMPTLY,
        "the page sees it on screen",
    )
    .await;
    w.done(id).await;
    page.wait_for(
        "document.body.dataset.status === 'done'",
        PROMPTLY,
        "the page sees it shown",
    )
    .await;
    let text = page.eval("document.body.innerText").await;
    assert!(text.as_str().unwrap().contains("was shown"), "{text}");
    page.assert_no_uncaught_errors();
    drop(page);
    // A tampered link: refused, and the page says so.
    let flipped = if url.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &url[..url.len() - 1]);
    let mut page = Page::open_until(
        &tampered,
        "document.readyState === 'complete' && document.body.dataset.refused === 'signature'",
        "the refused page loads",
    )
    .await;
    page.wait_for(
        "document.getElementById('headline').textContent.indexOf('not valid') !== -1",
        PROMPTLY,
        "the page says the link is not valid",
    )
    .await;
}

/// The dock lists each widget by its state: on air, off air (its OBS scene not live), preview.
#[actix_web::test]
async fn the_dock_lists_each_widget_on_air_off_air_or_preview() {
    let app = TestApp::memory().await;
    let _on_air = app.widget("alice").await;
    let mut off_air = app.widget("alice").await;
    off_air
        .send_json(json!({"type": "active", "active": false}))
        .await;
    let preview_url = format!(
        "{}/ws/alice?token={}&preview=1",
        app.base.replace("http://", "ws://"),
        app.token("alice")
    );
    let _preview = WidgetClient::connect(&preview_url)
        .await
        .expect("the preview connects");
    eventually(|| async {
        let s = app.status("alice").await;
        s["widgets"] == 2 && s["widgets_on_air"] == 1 && s["previews"] == 1
    })
    .await;
    let mut dock = open_dock(&app).await;
    dock.wait_for(
        "Array.from(document.querySelectorAll('#widget-list li')).map((li) => li.dataset.state)\
         .join(' ') === 'on-air off-air preview'",
        PROMPTLY,
        "the dock lists the widget on air, the one off air and the preview",
    )
    .await;
    let text = dock
        .eval("document.getElementById('widget-list').innerText")
        .await;
    assert!(text.as_str().unwrap().contains("off air"), "{text}");
    dock.assert_no_uncaught_errors();
}

/// The ready page of toasts: each broadcast message a toast, its title and body the data fields
/// the query names, set as text with dir=auto (right-to-left reads right, markup shows as
/// markup), an image only from an http(s) URL; a topic it may not subscribe to is refused.
#[actix_web::test]
async fn the_toast_page_shows_messages_as_text() {
    let mut args = serve_args(None);
    args.public_topics = vec!["t:*".into()];
    let app = TestApp::spawn(args).await;
    let image = image_server(80, 80).await;
    let (status, _) = app.get_text("/toasts?topics=secret:x").await;
    assert_eq!(status, 403);
    let mut page = Page::open_until(
        &format!(
            "{}/toasts?topics=t:a&title=headline&body=summary&image=thumb",
            app.base
        ),
        "typeof window.cueboxToasts === 'object' && window.cueboxToasts.connected >= 1",
        "the toast page loads and subscribes",
    )
    .await;
    let hostile = "<img src=x onerror=\"window.pwned=1\"> مرحبا بالعالم";
    for data in [
        json!({"headline": hostile, "summary": "שלום עולם", "thumb": image}),
        json!({"headline": "Second", "summary": 42, "thumb": "javascript:alert(1)"}),
    ] {
        let (status, body) = app
            .post_raw(
                "/broadcast",
                Some(PUBLISH_KEY),
                "application/json",
                json!({"topics": ["t:a"], "event": "new_trending", "data": data}).to_string(),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    page.wait_for(
        "document.querySelectorAll('#toasts .toast').length === 2",
        PROMPTLY,
        "both messages show as toasts",
    )
    .await;
    let seen = page
        .eval(
            "(() => { const t = document.querySelectorAll('#toasts .toast'); return {\
               title: t[0].querySelector('.title').textContent,\
               dir: t[0].querySelector('.title').dir,\
               markup: t[0].querySelector('.title').children.length,\
               body: t[0].querySelector('.body').textContent,\
               images: [t[0].querySelectorAll('img').length, t[1].querySelectorAll('img').length],\
               src: t[0].querySelector('img') && t[0].querySelector('img').src,\
               second: t[1].innerText,\
               pwned: window.pwned === undefined ? null : window.pwned }; })()",
        )
        .await;
    assert_eq!(seen["title"], hostile, "{seen}");
    assert_eq!(
        (&seen["dir"], &seen["markup"], &seen["body"]),
        (&json!("auto"), &json!(0), &json!("שלום עולם")),
        "{seen}"
    );
    assert_eq!(
        seen["images"],
        json!([1, 0]),
        "only the http(s) image: {seen}"
    );
    assert_eq!(seen["src"], image, "{seen}");
    assert!(seen["second"].as_str().unwrap().contains("42"), "{seen}");
    assert_eq!(seen["pwned"], Value::Null, "the markup ran: {seen}");
    page.assert_no_uncaught_errors();
}
