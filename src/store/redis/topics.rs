//! Broadcast topics' logs in Redis (see [`crate::topics`]): each message kept and sent to every
//! node in one function call, what a subscriber missed read back in another.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;

use super::functions::{Core, TOPIC_APPEND, TOPIC_READ};
use super::replies::{int, protocol, text};
use crate::store::{Call, StoreError};
use crate::topics::log::{missed, First, IDEMPOTENCY_TTL};
use crate::topics::{Missed, Outgoing, Sent, Topic, TopicLog};

/// The topic log of a Redis store: shared by every node on the Redis.
pub struct RedisTopicLog {
    pub(super) core: Arc<Core>,
    pub(super) keep: u64,
    pub(super) ttl: Duration,
}

impl RedisTopicLog {
    fn read_call(&self, function: &str, topic: &Topic, args: &[&str]) -> redis::Cmd {
        let (meta, log) = self.core.keys.topic(topic);
        let mut call = redis::cmd("FCALL");
        call.arg(function).arg(2).arg(meta).arg(log);
        for a in args {
            call.arg(*a);
        }
        call
    }
}

#[async_trait]
impl TopicLog for RedisTopicLog {
    async fn append(&self, topic: &Topic, message: &Outgoing) -> Result<Sent, StoreError> {
        let now = self.core.clock.now().to_string();
        let channel = self.core.keys.channel_of_topic(topic);
        let (keep, ttl) = (self.keep.to_string(), self.ttl.as_millis().to_string());
        let args = [
            &*self.core.node,
            &now,
            self.core.con.publish_command(),
            &channel,
            topic.as_str(),
            &message.body,
            &keep,
            &ttl,
        ];
        let reply = self
            .core
            .call(Call::Topics, self.read_call(TOPIC_APPEND, topic, &args))
            .await?;
        let offset = int(&reply)?;
        Ok(Sent {
            topic: topic.clone(),
            offset,
            frame: message.frame(topic, offset),
        })
    }

    async fn since(&self, topic: &Topic, since: u64) -> Result<Missed, StoreError> {
        let reply = self
            .core
            .call(Call::Topics, self.read_call(TOPIC_READ, topic, &[]))
            .await?;
        let Value::Array(items) = reply else {
            return Err(protocol("topic", &reply));
        };
        let (last, entries) = match items.as_slice() {
            [Value::Nil, _] => (0, Vec::new()),
            [last, Value::Array(entries)] => (int(last)?, entries.clone()),
            _ => return Err(StoreError::Protocol("topic: unexpected reply".into())),
        };
        // Each "<at> <offset> <frame>"; those past their time are not kept.
        let oldest = self
            .core
            .clock
            .now()
            .saturating_sub(self.ttl.as_millis() as u64);
        let kept: Vec<Sent> = entries
            .iter()
            .filter_map(|e| {
                let (at, rest) = text(e)?.split_once(' ')?;
                let (offset, frame) = rest.split_once(' ')?;
                (at.parse::<u64>().ok()? > oldest).then(|| Sent {
                    topic: topic.clone(),
                    offset: offset.parse().unwrap_or(0),
                    frame: frame.into(),
                })
            })
            .collect();
        Ok(missed(since, last, kept))
    }

    async fn remember(&self, key: &str, id: &str) -> Result<Option<First>, StoreError> {
        let at = self.core.keys.broadcast_idempotency(key);
        let claim = redis::cmd("SET")
            .arg(&at)
            .arg(id)
            .arg("NX")
            .arg("EX")
            .arg(IDEMPOTENCY_TTL.as_secs())
            .to_owned();
        if self.core.call(Call::Topics, claim).await? != Value::Nil {
            return Ok(None);
        }
        let seen = redis::cmd("GET").arg(&at).to_owned();
        let seen = self.core.call(Call::Topics, seen).await?;
        Ok(text(&seen).map(|s| {
            let (id, offsets) = s.split_once(' ').unwrap_or((s, "{}"));
            First {
                id: id.to_owned(),
                offsets: serde_json::from_str(offsets).unwrap_or_default(),
            }
        }))
    }

    async fn answered(
        &self,
        key: &str,
        id: &str,
        offsets: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        let value = format!("{id} {}", serde_json::Value::Object(offsets.clone()));
        let call = redis::cmd("SET")
            .arg(self.core.keys.broadcast_idempotency(key))
            .arg(value)
            .arg("XX")
            .arg("KEEPTTL")
            .to_owned();
        self.core.call(Call::Topics, call).await.map(drop)
    }
}
