//! The Redis key layout: migrated at start, recorded, and never guessed at when newer.

use cuebox::startup::{Application, StartError};

use crate::helpers::*;

#[actix_web::test]
async fn a_fresh_redis_is_migrated_to_the_latest_layout() {
    let redis = RedisServer::spawn().await;
    let _app = TestApp::redis(&redis).await;
    let version = redis.cmd(&["GET", "cuebox:schema:version"]).await;
    assert_eq!(
        version,
        redis::Value::BulkString(cuebox::migrate::latest().to_string().into_bytes())
    );
    assert_eq!(
        redis.cmd(&["EXISTS", "cuebox:schema:lock"]).await,
        redis::Value::Int(0),
        "the lock is released"
    );
}

#[actix_web::test]
async fn nodes_starting_together_migrate_once_and_all_start() {
    let redis = RedisServer::spawn().await;
    let (a, b, c) = tokio::join!(
        Application::build(serve_args(Some(redis.url()))),
        Application::build(serve_args(Some(redis.url()))),
        Application::build(serve_args(Some(redis.url()))),
    );
    for node in [a, b, c] {
        if let Err(e) = node {
            panic!("a node did not start: {e}");
        }
    }
}

#[actix_web::test]
async fn a_node_refuses_a_layout_newer_than_it_knows() {
    let redis = RedisServer::spawn().await;
    let newer = (cuebox::migrate::latest() + 1).to_string();
    redis.cmd(&["SET", "cuebox:schema:version", &newer]).await;
    match Application::build(serve_args(Some(redis.url()))).await {
        Err(StartError::Migrate(e)) => {
            let message = e.to_string();
            assert!(
                message.contains(&newer) && message.contains("newer"),
                "{message}"
            );
        }
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("a node started against a newer layout"),
    }
    // Another prefix is another layout.
    let mut args = serve_args(Some(redis.url()));
    args.redis.key_prefix = "other".into();
    assert!(Application::build(args).await.is_ok());
}

#[actix_web::test]
async fn the_binary_says_why_it_will_not_start() {
    let redis = RedisServer::spawn().await;
    redis.cmd(&["SET", "cuebox:schema:version", "999"]).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cuebox"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
        ])
        .env_remove("CUEBOX_PUBLISH_KEYS")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("layout is version 999"), "{stderr}");
}
