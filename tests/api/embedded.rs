//! The embedded store on disk, as a self-hoster runs it: real `cuebox` processes on a data dir of
//! the test's own, stopped, killed with SIGKILL, and started again on the same dir.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cuebox::store::embedded::disk::{Durability, MIGRATIONS};
use cuebox::store::embedded::EmbeddedStore;
use cuebox::store::{Publish, Store};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::helpers::*;

/// A `cuebox serve` process on a data dir, killed when dropped.
struct Node {
    child: tokio::process::Child,
    base: String,
    port: u16,
    http: awc::Client,
}

fn command(dir: &Path, port: u16) -> tokio::process::Command {
    let mut cmd = cuebox();
    cmd.args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(["--publish-key", PUBLISH_KEY, "--secret", SECRET])
        // Short, so an alert a killed node left in flight goes out again promptly.
        .args(["--start-timeout-ms", "1000", "--ack-grace-ms", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

impl Node {
    async fn start(dir: &Path, port: u16) -> Self {
        let child = command(dir, port).spawn().expect("cuebox runs");
        let node = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            http: awc::Client::builder().timeout(PROMPTLY).finish(),
        };
        let deadline = Instant::now() + PROMPTLY;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the node never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    }

    /// SIGKILL: no shutdown of any kind.
    async fn kill(mut self) {
        self.child.start_kill().expect("the node can be killed");
        let _ = self.child.wait().await;
    }

    async fn publish(&self, body: Value, key: Option<&str>) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .post(format!("{}/publish", self.base))
            .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
            .insert_header(("Content-Type", "application/json"));
        if let Some(key) = key {
            req = req.insert_header(("Idempotency-Key", key));
        }
        let mut res = req
            .send_body(body.to_string())
            .await
            .map_err(|e| e.to_string())?;
        let body = res.body().await.map_err(|e| e.to_string())?;
        Ok((
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        ))
    }

    async fn status(&self, receiver: &str) -> Value {
        let mut res = self
            .http
            .get(format!("{}/receivers/{receiver}", self.base))
            .insert_header(("Authorization", format!("Bearer {PUBLISH_KEY}")))
            .send()
            .await
            .expect("the node answers");
        serde_json::from_slice(&res.body().await.unwrap()).unwrap()
    }

    fn widget_url(&self, receiver: &str) -> String {
        let token = cuebox::auth::ReceiverTokens::new(SECRET).token(&receiver_id(receiver));
        format!("ws://127.0.0.1:{}/ws/{receiver}?token={token}", self.port)
    }
}

fn receiver_id(s: &str) -> cuebox::alert::ReceiverId {
    cuebox::alert::ReceiverId::parse(s).unwrap()
}

#[actix_web::test]
async fn a_second_node_on_the_same_data_dir_is_refused() {
    let dir = DataDir::fresh();
    let first = Node::start(&dir.0, free_port()).await;
    let out = tokio::time::timeout(PROMPTLY, command(&dir.0, free_port()).output())
        .await
        .expect("the second node exits at once")
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("another cuebox node is using the data dir") && said.contains("--redis-url"),
        "{said}"
    );
    // The first is untouched, and once it is gone the dir is free again.
    assert_eq!(first.status("alice").await["queued"], 0);
    first.kill().await;
    let again = Node::start(&dir.0, free_port()).await;
    assert_eq!(again.status("alice").await["queued"], 0);
}

#[actix_web::test]
async fn queued_alerts_and_idempotency_keys_survive_a_kill() {
    let dir = DataDir::fresh();
    let port = free_port();
    let node = Node::start(&dir.0, port).await;
    let mut ids = Vec::new();
    for (i, key) in [Some("pay-1"), None, Some("pay-3")].into_iter().enumerate() {
        let body = json!({ "receiver": "alice", "message": format!("alert {i}") });
        let (status, answer) = node.publish(body, key).await.unwrap();
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    node.kill().await;
    port_free(port).await;

    let node = Node::start(&dir.0, port).await;
    assert_eq!(node.status("alice").await["queued"], 3);
    // The platform's retry after the restart is still a duplicate.
    let body = json!({ "receiver": "alice", "message": "alert 0, again" });
    let (status, again) = node.publish(body, Some("pay-1")).await.unwrap();
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    assert_eq!(again["id"], ids[0].as_str());
    assert_eq!(node.status("alice").await["queued"], 3);

    let mut w = WidgetClient::connect_when_listening(&node.widget_url("alice")).await;
    assert_eq!(w.next_json().await["type"], "hello");
    for id in &ids {
        let (got, attempt, _) = w.next_alert().await;
        assert_eq!((&got, attempt), (id, 1));
        w.show(id).await;
    }
    eventually(|| async { node.status("alice").await["in_flight"].is_null() }).await;
}

/// What one receiver's widget saw: each alert id and the attempt it came with, in order.
type Seen = std::rc::Rc<std::cell::RefCell<Vec<(String, u64)>>>;

/// A widget that shows every alert for 10 ms, until its connection ends.
fn showing_widget(url: String, seen: Seen) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let Ok(mut w) = WidgetClient::connect(&url).await else {
            return;
        };
        while let Some(Incoming::Json(frame)) = w.next_within(PROMPTLY).await {
            if frame["type"] == "alert" {
                let id = frame["alert"]["id"].as_str().unwrap().to_owned();
                seen.borrow_mut()
                    .push((id.clone(), frame["attempt"].as_u64().unwrap()));
                tokio::time::sleep(Duration::from_millis(10)).await;
                w.show(&id).await;
            }
        }
    })
}

/// The self-hoster's promise: a node killed with SIGKILL at random moments of a drain, and
/// started again on its data dir, delivers every alert it answered 202, in order, and shows
/// none twice but an alert that was in flight at a kill.
#[actix_web::test]
async fn every_accepted_alert_is_delivered_after_kills_during_a_drain() {
    const RECEIVERS: [&str; 3] = ["r0", "r1", "r2"];
    const ROUNDS: usize = 4;
    /// Most publishes in one round.
    const PER_ROUND: usize = 80;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    eprintln!("kill moments seeded with {seed}");
    let mut rng = seed;
    let mut next_random = move |below: u32| {
        rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (rng >> 8) % below
    };

    let dir = DataDir::fresh();
    let port = free_port();
    let seen: HashMap<&str, Seen> = RECEIVERS.iter().map(|r| (*r, Seen::default())).collect();
    let mut accepted: HashMap<&str, Vec<String>> = HashMap::new();
    let mut published = 0;
    for round in 0..=ROUNDS {
        let node = Node::start(&dir.0, port).await;
        let widgets: Vec<_> = RECEIVERS
            .iter()
            .map(|r| showing_widget(node.widget_url(r), seen[r].clone()))
            .collect();
        if round == ROUNDS {
            // The last round kills nothing: everything accepted drains.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut left = 0;
                for r in RECEIVERS {
                    let s = node.status(r).await;
                    left += s["queued"].as_u64().unwrap() + u64::from(!s["in_flight"].is_null());
                }
                if left == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{left} alerts never drained");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            node.kill().await;
            for w in widgets {
                let _ = w.await;
            }
            break;
        }
        // Publish while the widgets drain, and kill the node at a random moment of it: the
        // widgets take 10 ms an alert, so queues are still long when it comes.
        let kill_after = Duration::from_millis(u64::from(100 + next_random(400)));
        let started = Instant::now();
        for i in 0..PER_ROUND {
            if started.elapsed() >= kill_after {
                break;
            }
            let r = RECEIVERS[published % RECEIVERS.len()];
            published += 1;
            let body = json!({ "receiver": r, "message": format!("alert {published}"),
                               "duration_ms": 1000 });
            if let Ok((202, answer)) = node.publish(body, None).await {
                let id = answer["id"].as_str().unwrap().to_owned();
                accepted.entry(r).or_default().push(id);
            }
            if i >= 20 {
                // A burst first, so queues are long, then a pace the widgets nearly keep up with.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(kill_after.saturating_sub(started.elapsed())).await;
        let shown: usize = seen.values().map(|s| s.borrow().len()).sum();
        eprintln!(
            "round {round}: killed after {kill_after:?}, {published} published, {shown} shown"
        );
        node.kill().await;
        for w in widgets {
            let _ = w.await;
        }
        port_free(port).await;
    }

    let total: usize = accepted.values().map(Vec::len).sum();
    assert!(
        total >= 20,
        "too few alerts accepted to tell anything: {total}"
    );
    for r in RECEIVERS {
        let seen = seen[r].borrow();
        let accepted = accepted.get(r).cloned().unwrap_or_default();
        // Every accepted alert was shown, first in the order it was accepted. (A publish whose
        // answer a kill cut off may have been queued too; it is shown, and ignored here.)
        let mut first_shown: Vec<&String> = Vec::new();
        for (id, _) in seen.iter() {
            if !first_shown.contains(&id) {
                first_shown.push(id);
            }
        }
        first_shown.retain(|id| accepted.contains(id));
        assert_eq!(
            first_shown,
            accepted.iter().collect::<Vec<_>>(),
            "{r}: shown {seen:?}"
        );
        // Shown twice only when in flight at a kill, with a higher attempt the second time:
        // at most one alert per kill.
        let mut attempts: HashMap<&str, Vec<u64>> = HashMap::new();
        for (id, attempt) in seen.iter() {
            attempts.entry(id).or_default().push(*attempt);
        }
        let repeated: Vec<_> = attempts.iter().filter(|(_, a)| a.len() > 1).collect();
        assert!(repeated.len() <= ROUNDS, "{r}: {repeated:?}");
        for (id, a) in repeated {
            assert!(a.windows(2).all(|w| w[1] > w[0]), "{r}: {id} came {a:?}");
        }
    }
    eprintln!("{total} alerts accepted over {ROUNDS} kills, every one delivered");
}

/// A database written by the first schema (before the node's secrets were kept) is upgraded in
/// place at start, with every receiver's queue and idempotency keys still there.
#[actix_web::test]
async fn a_database_of_the_first_schema_is_upgraded_with_everything_still_there() {
    let dir = DataDir::fresh();
    std::fs::create_dir_all(&dir.0).unwrap();
    let far = 4_000_000_000_000_i64;
    {
        let db = rusqlite::Connection::open(dir.0.join("cuebox.db")).unwrap();
        db.execute_batch(MIGRATIONS[0].1).unwrap();
        db.execute_batch(&format!(
            "PRAGMA user_version = 1;
             INSERT INTO receivers (receiver, seq) VALUES ('alice', 7000);
             INSERT INTO queue VALUES ('alice', -1, 'a-1', 5000, 1, '{{\"id\":\"a-1\"}}');
             INSERT INTO queue VALUES ('alice', 0, 'a-2', 5000, 0, '{{\"id\":\"a-2\"}}');
             INSERT INTO idempotency VALUES ('alice', 'pay-1', 'a-1', 0, {far});"
        ))
        .unwrap();
    }
    let (store, secrets) = EmbeddedStore::open(&dir.0, Durability::Normal, fast_rules())
        .expect("the old database opens");
    assert!(!secrets.widget_secret.is_empty() && secrets.publish_key.starts_with("pk_"));
    let alice = receiver("alice");
    assert_eq!(store.status(&alice).await.unwrap().queued, 2);
    let again = store
        .publish(&record("alice", "a retry"), Some("pay-1"))
        .await
        .unwrap();
    assert_eq!(
        again,
        Publish::Duplicate {
            id: "a-1".into(),
            position: 0
        }
    );
    // The queue goes out in its order, the first counting the time it was sent before.
    let snap = store
        .widgets(&alice, cuebox::store::WidgetChange::Joined)
        .await
        .unwrap();
    let flight = snap.flight.expect("the head goes out");
    assert_eq!((&*flight.id, flight.attempt), ("a-1", 2));
    assert!(snap.seq > 7000);
    drop(store);
    let db = rusqlite::Connection::open(dir.0.join("cuebox.db")).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
}

/// The database keeps each receiver's newest `--history` alerts, even for a receiver whose only
/// alerts were filtered (it never has a row of its own), and a restart finds them in order.
#[tokio::test]
async fn the_database_keeps_only_the_newest_history_and_finds_it_after_a_restart() {
    let dir = DataDir::fresh();
    let rules = cuebox::store::Rules {
        history: 3,
        ..fast_rules()
    };
    let (store, _) = EmbeddedStore::open(&dir.0, Durability::Normal, rules).unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        let alert = record("alice", &format!("filtered {i}"));
        store.filtered(&alert).await.unwrap();
        ids.push(alert.id);
    }
    let rows = || {
        let db = rusqlite::Connection::open(dir.0.join("cuebox.db")).unwrap();
        db.query_row("SELECT count(*) FROM history", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    eventually(|| async { rows() == 3 }).await;
    drop(store);
    let (store, _) = EmbeddedStore::open(&dir.0, Durability::Normal, rules).unwrap();
    let kept = store
        .history(&receiver_id("alice"), None, 10)
        .await
        .unwrap();
    let kept: Vec<String> = kept.records.iter().map(|r| r.id.to_string()).collect();
    ids.reverse();
    assert_eq!(kept, ids[..3]);
}
