//! The frames a widget is sent, built once per alert and shared by every widget that gets it:
//! the alert with the look its receiver's designs resolve it to, and its speech.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Frame;
use crate::design::{Designs, Tts};
use crate::speech::{Said, Speech};

/// A version of a receiver's designs, parsed.
pub struct LoadedDesigns {
    pub version: u64,
    pub designs: Designs,
    /// The look of each kind whose design has no variations, serialized once: most alerts'
    /// looks depend on their kind alone, and so cost a send no resolving.
    plain: Mutex<HashMap<String, Arc<str>>>,
}

impl LoadedDesigns {
    pub fn new(version: u64, designs: Designs) -> Self {
        Self {
            version,
            designs,
            plain: Mutex::new(HashMap::new()),
        }
    }

    /// The frame that sends alert `alert` (its JSON as stored): with its look, and, if the
    /// receiver reads alerts out and this node can, its speech, which starts being made now;
    /// and the key of that speech, if any.
    pub fn frame(
        &self,
        alert: &str,
        attempt: u32,
        speech: Option<&Arc<Speech>>,
    ) -> (Frame, Option<String>) {
        let said = self
            .designs
            .tts
            .as_ref()
            .filter(|t| t.enabled)
            .zip(speech.filter(|s| s.enabled()))
            .and_then(|(tts, speech)| said_of(alert, tts, speech));
        let look = self.look_of(alert);
        let version = self.version;
        let (speech, key) = match said {
            Some((key, text)) => {
                let text = serde_json::to_string(&text).unwrap_or_default();
                let field = format!(r#","speech":{{"url":"/speech/{key}","text":{text}}}"#);
                (field, Some(key))
            }
            None => (String::new(), None),
        };
        let frame = format!(
            r#"{{"type":"alert","alert":{alert},"attempt":{attempt},"design":{look},"design_version":{version}{speech}}}"#
        );
        (frame.into(), key)
    }

    /// The look alert `alert` (its JSON as stored) is shown with, as JSON.
    fn look_of(&self, alert: &str) -> Arc<str> {
        let kind = crate::alert::kind_of(alert);
        let serialize = |look: &crate::design::Resolved| -> Arc<str> {
            // unwrap: strings, numbers and enums.
            serde_json::to_string(look)
                .expect("a look serializes")
                .into()
        };
        if self.designs.varies(&kind) {
            let parsed: serde_json::Value = serde_json::from_str(alert).unwrap_or_default();
            return serialize(&self.designs.resolve(&parsed));
        }
        let mut plain = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(look) = plain.get(&*kind) {
            return look.clone();
        }
        let look = serialize(&self.designs.resolve(&serde_json::json!({ "kind": kind })));
        // Bounded: kinds are few, but a publisher may make up any; past a few, none are kept.
        if plain.len() < 64 {
            plain.insert(kind.into_owned(), look.clone());
        }
        look
    }
}

/// What alert `alert` says out loud, if its receiver's `tts` reads it: the speech's key (it is
/// being made from now) and its words.
fn said_of(alert: &str, tts: &Tts, speech: &Arc<Speech>) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Amount {
        value: String,
        currency: String,
    }
    #[derive(serde::Deserialize)]
    struct Spoken {
        from: Option<String>,
        message: Option<String>,
        amount: Option<Amount>,
    }
    let spoken: Spoken = serde_json::from_str(alert).ok()?;
    let amount = spoken
        .amount
        .as_ref()
        .map(|a| (a.value.as_str(), a.currency.as_str()));
    if !tts.reads(amount) {
        return None;
    }
    let text = crate::speech::words(
        spoken.from.as_deref(),
        spoken.message.as_deref(),
        tts.max_chars.0 as usize,
    );
    if text.is_empty() {
        return None;
    }
    let said = Said {
        text: text.clone(),
        voice: tts.voice.0.to_string(),
        rate: tts.rate.0,
    };
    speech.prepare(said).map(|key| (key, text))
}

/// `{"type":"alert","alert":{...},"attempt":N,"design":{...}}`, around the alert's JSON as
/// stored, with the look it is shown with resolved from the receiver's designs (the built-in
/// ones when there are none), and their version.
pub fn alert_frame(alert: &str, attempt: u32, designs: Option<&LoadedDesigns>) -> Frame {
    static BUILT_IN: std::sync::OnceLock<LoadedDesigns> = std::sync::OnceLock::new();
    let designs = designs
        .unwrap_or_else(|| BUILT_IN.get_or_init(|| LoadedDesigns::new(0, Designs::default())));
    let (look, version) = (designs.look_of(alert), designs.version);
    format!(
        r#"{{"type":"alert","alert":{alert},"attempt":{attempt},"design":{look},"design_version":{version}}}"#
    )
    .into()
}

/// `{"type":"skip","id":"..."}`: the streamer skipped the alert, and widgets stop it at once.
pub(super) fn skip_frame(id: &str) -> Frame {
    serde_json::json!({"type": "skip", "id": id})
        .to_string()
        .into()
}
