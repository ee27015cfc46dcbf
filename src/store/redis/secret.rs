//! The widget token secret every node shares.

use redis::Value;

use super::connection::Connection;
use super::keys::Keys;
use crate::store::StoreError;

/// The widget token secret every node shares: made by the first node that asks, then kept, so
/// OBS URLs survive restarts.
pub async fn shared_secret(con: &mut Connection, keys: &Keys) -> Result<String, StoreError> {
    let fresh = crate::auth::random_secret();
    let _: Value = redis::cmd("SET")
        .arg(keys.secret())
        .arg(&fresh)
        .arg("NX")
        .query_async(con)
        .await?;
    let secret: Option<String> = redis::cmd("GET")
        .arg(keys.secret())
        .query_async(con)
        .await?;
    secret.ok_or_else(|| StoreError::Protocol("the shared secret vanished".into()))
}
