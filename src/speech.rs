//! Text-to-speech for the alert box: the node makes the speech and the widget plays it as audio,
//! since OBS does not capture a browser source's own speech synthesis when it controls the
//! source's audio, and OBS's browser has no network voices.
//!
//! The engine is a local program (`--tts-command`, espeak-ng by default when installed) or an
//! HTTP service (`--tts-url`). Each speech is made once per node and kept (bounded): the hub
//! asks for it when it sends an alert ([`Speech::prepare`]), so it is being made while the widget
//! loads the alert's media, and the widget fetches it from `GET /speech/{key}`
//! ([`Speech::audio`]). An engine that fails, or takes over [`ENGINE_LIMIT`], never holds the
//! queue: the widget shows the alert without speech.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Longest an engine may take to make one speech.
pub const ENGINE_LIMIT: Duration = Duration::from_secs(5);
/// Speeches a node keeps, and their bytes in all; past either, the oldest go.
const KEPT: usize = 512;
const KEPT_BYTES: usize = 64 * 1024 * 1024;
/// Longest speech kept, in bytes (about 2 minutes of espeak-ng's 22 kHz mono WAV).
const LONGEST: usize = 6 * 1024 * 1024;
/// The default engine, when it is installed.
pub const DEFAULT_COMMAND: &str = "espeak-ng --stdout -v {voice} -s {rate}";

/// What makes speech.
#[derive(Clone, Debug)]
pub enum Engine {
    /// A command line, `{voice}` and `{rate}` replaced in its arguments; the text on its
    /// standard input, the audio on its standard output.
    Command(Vec<String>),
    /// `POST {"text","voice","rate"}` to this URL, answered with the audio.
    Http(String),
}

impl Engine {
    /// The engine the flags name: `--tts-url`, else `--tts-command`, else espeak-ng if it is on
    /// the PATH; none otherwise.
    pub fn from_flags(command: Option<&str>, url: Option<&str>) -> Option<Self> {
        if let Some(url) = url.filter(|u| !u.is_empty()) {
            return Some(Engine::Http(url.to_owned()));
        }
        let line = match command {
            Some(c) if c.trim().is_empty() => return None,
            Some(c) => c.to_owned(),
            None if on_path("espeak-ng") => DEFAULT_COMMAND.to_owned(),
            None => return None,
        };
        Some(Engine::Command(
            line.split_whitespace().map(str::to_owned).collect(),
        ))
    }

    async fn make(&self, what: &Said) -> Result<Bytes, String> {
        match self {
            Engine::Command(line) => {
                let fill = |a: &String| {
                    a.replace("{voice}", &what.voice)
                        .replace("{rate}", &what.rate.to_string())
                };
                let (program, args) = line.split_first().ok_or("an empty --tts-command")?;
                let mut child = tokio::process::Command::new(fill(program))
                    .args(args.iter().map(fill))
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("the engine did not start: {e}"))?;
                let mut stdin = child.stdin.take().ok_or("no stdin")?;
                stdin
                    .write_all(what.text.as_bytes())
                    .await
                    .map_err(|e| format!("the engine took no text: {e}"))?;
                drop(stdin);
                let out = child
                    .wait_with_output()
                    .await
                    .map_err(|e| format!("the engine failed: {e}"))?;
                if !out.status.success() {
                    return Err(format!("the engine exited with {}", out.status));
                }
                Ok(Bytes::from(out.stdout))
            }
            Engine::Http(url) => {
                // awc's futures stay on one thread, as actix's do: the call gets a thread and a
                // runtime of its own (a speech is made once per alert at most, so this is rare).
                let (url, said) = (url.clone(), what.clone());
                tokio::task::spawn_blocking(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("no runtime for the speech service: {e}"))?;
                    tokio::task::LocalSet::new().block_on(&runtime, post(&url, &said))
                })
                .await
                .map_err(|e| format!("the speech service's call failed: {e}"))?
            }
        }
    }
}

async fn post(url: &str, what: &Said) -> Result<Bytes, String> {
    let body = serde_json::json!({"text": what.text, "voice": what.voice, "rate": what.rate});
    let mut res = awc::Client::new()
        .post(url)
        .timeout(ENGINE_LIMIT)
        .send_json(&body)
        .await
        .map_err(|e| format!("the speech service did not answer: {e}"))?;
    if !res.status().is_success() {
        return Err(format!("the speech service answered {}", res.status()));
    }
    res.body()
        .limit(LONGEST)
        .await
        .map_err(|e| format!("the speech service's audio did not arrive: {e}"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// One speech to make: the text and how to say it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Said {
    pub text: String,
    pub voice: String,
    pub rate: u32,
}

impl Said {
    /// Its key: the same words said the same way are made once.
    pub fn key(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.voice.as_bytes(),
            &self.rate.to_be_bytes(),
            self.text.as_bytes(),
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A speech being made, or made.
#[derive(Clone, Debug)]
pub enum Made {
    Making,
    Audio(Bytes),
    /// Why there is none (the engine failed or was too slow).
    Failed(String),
}

/// How a speech the engine took too long for is failed.
const TOO_SLOW: &str = "the engine took over";

pub struct Speech {
    engine: Option<Engine>,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    speeches: HashMap<String, watch::Receiver<Made>>,
    order: VecDeque<(String, usize)>,
    bytes: usize,
}

impl Speech {
    pub fn new(engine: Option<Engine>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            kept: Mutex::default(),
        })
    }

    /// Whether this node can make speech at all.
    pub fn enabled(&self) -> bool {
        self.engine.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why an alert whose speech is `key` was shown without it, if it was: the engine failed,
    /// or was still at it (or gave up past [`ENGINE_LIMIT`]) when the alert was done.
    pub fn unspoken(&self, key: &str) -> Option<crate::store::history::Mark> {
        use crate::store::history::Mark;
        let made = self.lock().speeches.get(key)?.borrow().clone();
        match made {
            Made::Audio(_) => None,
            Made::Making => Some(Mark::SpeechLate),
            Made::Failed(why) if why.starts_with(TOO_SLOW) => Some(Mark::SpeechLate),
            Made::Failed(_) => Some(Mark::SpeechFailed),
        }
    }

    /// Starts making `said` unless it is made or being made; answers its key, or `None` when
    /// this node has no engine. Never waits.
    pub fn prepare(self: &Arc<Self>, said: Said) -> Option<String> {
        let engine = self.engine.clone()?;
        let key = said.key();
        let (made, making) = {
            let mut kept = self.lock();
            if kept.speeches.contains_key(&key) {
                return Some(key);
            }
            let (made, making) = watch::channel(Made::Making);
            kept.speeches.insert(key.clone(), making.clone());
            (made, making)
        };
        drop(making);
        let (me, k) = (self.clone(), key.clone());
        tokio::spawn(async move {
            let result = tokio::time::timeout(ENGINE_LIMIT, engine.make(&said)).await;
            let outcome = match result {
                Ok(Ok(audio)) if audio.is_empty() => {
                    Made::Failed("the engine made no audio".into())
                }
                Ok(Ok(audio)) if audio.len() > LONGEST => {
                    Made::Failed("the speech is too long".into())
                }
                Ok(Ok(audio)) => Made::Audio(whole_wav(audio)),
                Ok(Err(why)) => Made::Failed(why),
                Err(_) => Made::Failed(format!("{TOO_SLOW} {} s", ENGINE_LIMIT.as_secs())),
            };
            if let Made::Failed(why) = &outcome {
                tracing::warn!(why, "no speech for an alert");
            }
            let size = match &outcome {
                Made::Audio(a) => a.len(),
                _ => 0,
            };
            let _ = made.send(outcome);
            me.kept_one(k, size);
        });
        Some(key)
    }

    /// Counts a finished speech against the bounds, letting the oldest go past them.
    fn kept_one(&self, key: String, size: usize) {
        let mut kept = self.lock();
        kept.order.push_back((key, size));
        kept.bytes += size;
        while kept.order.len() > KEPT || kept.bytes > KEPT_BYTES {
            let Some((old, size)) = kept.order.pop_front() else {
                break;
            };
            kept.bytes -= size;
            kept.speeches.remove(&old);
        }
    }

    /// The speech of `key`, waiting for it while it is being made (an engine is cut off at
    /// [`ENGINE_LIMIT`]); `None` for a key this node never prepared (or let go).
    pub async fn audio(&self, key: &str) -> Option<Made> {
        let mut made = self.lock().speeches.get(key)?.clone();
        let settled = made
            .wait_for(|m| !matches!(m, Made::Making))
            .await
            .map(|m| m.clone());
        Some(settled.unwrap_or_else(|_| Made::Failed("the speech was let go".into())))
    }
}

/// A WAV written to a pipe says its length is unknown (espeak-ng writes 0x7ffff000-odd): the
/// sizes are set from the bytes that came, so every player reads it to its end and no further.
fn whole_wav(audio: Bytes) -> Bytes {
    let riff = audio.len() >= 44 && &audio[..4] == b"RIFF" && &audio[8..12] == b"WAVE";
    let data_at = audio
        .windows(4)
        .take(200)
        .position(|w| w == b"data")
        .filter(|&at| at + 8 <= audio.len());
    match (riff, data_at) {
        (true, Some(at)) => {
            let mut wav = audio.to_vec();
            let total = (wav.len() - 8) as u32;
            wav[4..8].copy_from_slice(&total.to_le_bytes());
            let data = (wav.len() - at - 8) as u32;
            wav[at + 4..at + 8].copy_from_slice(&data.to_le_bytes());
            Bytes::from(wav)
        }
        _ => audio,
    }
}

/// What the speech of an alert says: the donor's name and the message, as moderation left them
/// (masked words dropped rather than read out as stars, links gone), cut to `max_chars`.
pub fn words(from: Option<&str>, message: Option<&str>, max_chars: usize) -> String {
    let clean = |s: &str| {
        s.split_whitespace()
            .filter(|w| !w.chars().all(|c| c == '*'))
            .map(|w| w.replace("***", ""))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let from = clean(from.unwrap_or("").trim());
    let message = clean(message.unwrap_or("").trim());
    let text = match (from.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => from,
        (true, false) => message,
        (false, false) => format!("{from}. {message}"),
    };
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_leave_masks_out_and_keep_to_the_limit() {
        assert_eq!(
            words(Some("Ana"), Some("you *** rock ***!"), 200),
            "Ana. you rock !"
        );
        assert_eq!(words(None, Some("hi"), 200), "hi");
        assert_eq!(words(Some("Ana"), None, 2), "An");
        assert_eq!(words(Some("  "), Some(""), 200), "");
    }

    #[test]
    fn a_streamed_wav_gets_its_sizes() {
        let mut wav = b"RIFF\xff\xff\xff\x7fWAVEfmt ".to_vec();
        wav.extend_from_slice(&[
            16, 0, 0, 0, 1, 0, 1, 0, 0x22, 0x56, 0, 0, 0x44, 0xac, 0, 0, 2, 0, 16, 0,
        ]);
        wav.extend_from_slice(b"data\xff\xff\xff\x7f");
        wav.extend_from_slice(&[0u8; 100]);
        let fixed = whole_wav(Bytes::from(wav));
        assert_eq!(u32::from_le_bytes(fixed[4..8].try_into().unwrap()), 136);
        assert_eq!(u32::from_le_bytes(fixed[40..44].try_into().unwrap()), 100);
    }

    #[test]
    fn the_same_words_said_alike_share_a_key() {
        let said = |text: &str, rate| Said {
            text: text.into(),
            voice: "en".into(),
            rate,
        };
        assert_eq!(said("hi", 175).key(), said("hi", 175).key());
        assert_ne!(said("hi", 175).key(), said("hi", 176).key());
        assert_eq!(said("hi", 175).key().len(), 32);
    }
}
