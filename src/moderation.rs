//! A receiver's moderation settings, and what they do to an alert before it is queued.
//!
//! Settings are data a streamer (or a moderator, with the dashboard token) sets with
//! `PUT /receivers/{r}/settings`; they apply at publish time, on the node that takes the publish,
//! so nothing a filter removes ever reaches the store, a widget, or text-to-speech.
//!
//! - `min_amount`: per currency; an alert below it is filtered.
//! - `blocked_words`, with `blocked_mode`: `hide_message` drops the message, `drop` filters the
//!   alert, `mask` puts `***` in place of each word. Matching ignores case, accents and common
//!   look-alike characters (Cyrillic and Greek letters that look Latin, by Unicode's confusables
//!   (UTS #39), and digits and symbols written for letters: `1d10t`, `@ss`).
//! - `strip_links` (on unless turned off): anything URL-shaped in `from` or `message` is removed.
//! - `hold_for_approval`, with `auto_approve_after_ms`: what passes the filters is held until the
//!   streamer approves or denies it (or, with the delay, approves itself); see [`Settings::hold`].
//! - `hold_while_inactive` (on unless turned off): alerts wait while every widget is off air.
//!   Not moderation, but a receiver's setting all the same: the widget's connection reads it
//!   when a widget says it went off air.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use unicode_normalization::char::is_combining_mark;

use crate::alert::{Amount, Decimal, FieldError, NewAlert, ReceiverId};
use crate::design::Designs;
use crate::store::{Store, StoreError};

/// How long a node uses settings it read before reading them again (in the background): a
/// change made on another node applies here within about this (on the node that made it, at
/// once).
pub const SETTINGS_FRESH: Duration = Duration::from_secs(2);
/// Receivers whose settings a node holds at once; past it the oldest half is let go.
const SETTINGS_HELD: usize = 10_000;

/// Each receiver's settings as this node last read them, so a publish costs the store no read;
/// and its designs alike, for the duration of an alert that carries none (widgets are sent the
/// newest designs by the hub, which hears of each new version at once).
///
/// Settings older than [`SETTINGS_FRESH`] are still used, and read again in the background: a
/// publish waits for the store only the first time this node meets the receiver, and a store that
/// stalls delays no publish on settings this node already holds.
pub struct SettingsCache {
    store: Arc<dyn Store>,
    held: Mutex<HashMap<ReceiverId, Held>>,
}

struct Held {
    at: Instant,
    settings: Arc<Settings>,
    designs: Arc<Designs>,
    /// A read is under way.
    reading: bool,
}

impl SettingsCache {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The receiver's settings. A read that fails takes nothing, so it is
    /// [`StoreError::Unavailable`] whatever the store said.
    pub async fn get(self: &Arc<Self>, receiver: &ReceiverId) -> Result<Arc<Settings>, StoreError> {
        let stale = {
            let mut held = self.lock();
            match held.get_mut(receiver) {
                Some(h) => {
                    let stale = h.at.elapsed() >= SETTINGS_FRESH && !h.reading;
                    h.reading |= stale;
                    Some((h.settings.clone(), stale))
                }
                None => None,
            }
        };
        match stale {
            Some((settings, false)) => Ok(settings),
            Some((settings, true)) => {
                let (me, receiver) = (self.clone(), receiver.clone());
                tokio::spawn(async move {
                    if let Err(e) = me.read(&receiver).await {
                        tracing::warn!(%receiver, error = %e, "could not read a receiver's settings");
                        if let Some(h) = me.lock().get_mut(&receiver) {
                            h.reading = false;
                        }
                    }
                });
                Ok(settings)
            }
            None => self.read(receiver).await.map_err(|e| match e {
                StoreError::OutcomeUnknown(m) => StoreError::Unavailable(m),
                e => e,
            }),
        }
    }

    async fn read(&self, receiver: &ReceiverId) -> Result<Arc<Settings>, StoreError> {
        let settings = match self.store.settings(receiver).await? {
            None => Settings::new(),
            Some(json) => Settings::parse(json.as_bytes()).unwrap_or_else(|e| {
                tracing::warn!(%receiver, error = %e.message, "stored settings do not parse; using the defaults");
                Settings::new()
            }),
        };
        let settings = Arc::new(settings);
        let newest = self.store.designs(receiver, 1).await?.into_iter().next();
        let designs = Designs::kept_or_built_in(receiver, newest.as_ref().map(|v| &*v.json));
        self.hold(receiver, settings.clone(), Arc::new(designs));
        Ok(settings)
    }

    /// The receiver's designs as last read with its settings (by [`SettingsCache::get`]); the
    /// built-in ones if none are held.
    pub fn designs(&self, receiver: &ReceiverId) -> Arc<Designs> {
        self.lock()
            .get(receiver)
            .map(|h| h.designs.clone())
            .unwrap_or_default()
    }

    /// New designs were kept on this node: publishes here use them at once.
    pub fn designs_put(&self, receiver: &ReceiverId, designs: Designs) {
        if let Some(h) = self.lock().get_mut(receiver) {
            h.designs = Arc::new(designs);
        }
    }

    /// Keeps new settings in the store, and uses them here at once.
    pub async fn put(&self, receiver: &ReceiverId, settings: Settings) -> Result<(), StoreError> {
        // unwrap: settings are plain strings, maps and booleans.
        let json = serde_json::to_string(&settings).expect("settings serialize");
        self.store.put_settings(receiver, &json).await?;
        let designs = self.designs(receiver);
        self.hold(receiver, Arc::new(settings), designs);
        Ok(())
    }

    fn hold(&self, receiver: &ReceiverId, settings: Arc<Settings>, designs: Arc<Designs>) {
        let mut held = self.lock();
        if held.len() >= SETTINGS_HELD && !held.contains_key(receiver) {
            held.retain(|_, h| h.at.elapsed() < SETTINGS_FRESH);
            if held.len() >= SETTINGS_HELD {
                held.clear();
            }
        }
        let now = Instant::now();
        held.insert(
            receiver.clone(),
            Held {
                at: now,
                settings,
                designs,
                reading: false,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReceiverId, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Most blocked words, and the longest one: enough for any streamer's list, small enough that
/// checking a 500-character message against it stays in microseconds.
const MOST_BLOCKED_WORDS: usize = 500;
const LONGEST_BLOCKED_WORD: usize = 64;
const MASK: &str = "***";

/// One receiver's settings, as stored and as `GET /receivers/{r}/settings` answers them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Currency (ISO 4217, upper case) -> the least amount shown, as a decimal string.
    pub min_amount: BTreeMap<String, String>,
    pub blocked_words: Vec<String>,
    pub blocked_mode: BlockedMode,
    #[serde(default = "on")]
    pub strip_links: bool,
    pub hold_for_approval: bool,
    /// With `hold_for_approval`: a held alert approves itself this long after it was published.
    pub auto_approve_after_ms: Option<u64>,
    /// Alerts wait while every widget is off air (in OBS, on a scene that is not live), rather
    /// than play to nobody; on unless turned off.
    #[serde(default = "on")]
    pub hold_while_inactive: bool,
    /// `blocked_words` as matching sees them (see [`fold`]): made once when the settings are
    /// read, not at every publish.
    #[serde(skip)]
    folded: Vec<Vec<char>>,
}

fn on() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockedMode {
    HideMessage,
    Drop,
    #[default]
    Mask,
}

impl Settings {
    /// The settings of a receiver nobody has set: links stripped, nothing else.
    pub fn new() -> Self {
        Self {
            strip_links: true,
            hold_while_inactive: true,
            ..Self::default()
        }
    }

    /// Parses and checks a `PUT` body: an unknown field, a bad currency or amount, or a word list
    /// too long is a 400 that names the field.
    pub fn parse(body: &[u8]) -> Result<Self, FieldError> {
        let mut settings: Settings = serde_json::from_slice(body).map_err(|e| {
            let field = e
                .to_string()
                .split('`')
                .nth(1)
                .filter(|_| e.to_string().starts_with("unknown field"))
                .map(str::to_owned);
            FieldError {
                code: "invalid_settings",
                message: format!("the settings are not valid: {e}"),
                field,
            }
        })?;
        for (currency, value) in &settings.min_amount {
            let ok = currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase());
            if !ok || Decimal::parse(value).is_none() {
                return Err(FieldError::invalid(
                    "min_amount",
                    format!(
                        "min_amount maps a currency (3 capital letters) to a decimal string; \
                         {currency:?}: {value:?} is not one"
                    ),
                ));
            }
        }
        if let Some(ms) = settings.auto_approve_after_ms {
            if !(1..=MOST_AUTO_APPROVE_MS).contains(&ms) {
                return Err(FieldError::invalid(
                    "auto_approve_after_ms",
                    format!("auto_approve_after_ms must be from 1 to {MOST_AUTO_APPROVE_MS}"),
                ));
            }
        }
        settings.folded = settings
            .blocked_words
            .iter()
            .map(|w| fold(w).chars().collect())
            .collect();
        let bad_word = |(word, folded): (&String, &Vec<char>)| {
            let n = word.chars().count();
            n == 0 || n > LONGEST_BLOCKED_WORD || folded.is_empty()
        };
        if settings.blocked_words.len() > MOST_BLOCKED_WORDS
            || settings
                .blocked_words
                .iter()
                .zip(&settings.folded)
                .any(bad_word)
        {
            return Err(FieldError::invalid(
                "blocked_words",
                format!(
                    "blocked_words holds at most {MOST_BLOCKED_WORDS} words of 1 to \
                     {LONGEST_BLOCKED_WORD} characters, each with a letter or digit"
                ),
            ));
        }
        Ok(settings)
    }
}

/// The longest a held alert may wait to approve itself: a day.
const MOST_AUTO_APPROVE_MS: u64 = 24 * 60 * 60 * 1000;

impl Settings {
    /// How an alert that passes the filters is held for approval, if it is.
    pub fn hold(&self) -> Option<crate::store::machine::Hold> {
        self.hold_for_approval
            .then_some(crate::store::machine::Hold {
                approve_after: self.auto_approve_after_ms,
            })
    }
}

/// What moderation made of an alert.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Shown, perhaps changed.
    Show,
    /// Never shown, and why: `min_amount` or `blocked_words`.
    Filtered(&'static str),
}

/// Applies the settings to an alert about to be queued.
pub fn moderate(settings: &Settings, alert: &mut NewAlert) -> Verdict {
    if let Some(amount) = &alert.amount {
        if below_minimum(settings, amount) {
            return Verdict::Filtered("min_amount");
        }
    }
    if settings.strip_links {
        for text in [&mut alert.from, &mut alert.message].into_iter().flatten() {
            strip_links(text);
        }
    }
    if settings.folded.is_empty() {
        return Verdict::Show;
    }
    let words = &settings.folded;
    let mode = settings.blocked_mode;
    if let Some(from) = &mut alert.from {
        let (masked, found) = mask(from, words);
        match mode {
            BlockedMode::Drop if found => return Verdict::Filtered("blocked_words"),
            // A name cannot be hidden; it is masked in both other modes.
            _ if found => *from = masked,
            _ => {}
        }
    }
    if let Some(message) = &alert.message {
        let (masked, found) = mask(message, words);
        match mode {
            _ if !found => {}
            BlockedMode::Drop => return Verdict::Filtered("blocked_words"),
            BlockedMode::Mask => alert.message = Some(masked),
            BlockedMode::HideMessage => alert.message = None,
        }
    }
    Verdict::Show
}

fn below_minimum(settings: &Settings, amount: &Amount) -> bool {
    let Some(min) = settings.min_amount.get(&amount.currency) else {
        return false;
    };
    match (Decimal::parse(&amount.value), Decimal::parse(min)) {
        (Some(value), Some(min)) => value < min,
        _ => false,
    }
}

/// One character as matching sees it: lower case, digits and symbols read as the letters they
/// stand for, look-alikes as their Latin prototype (UTS #39 skeleton), accents dropped.
fn fold_char(c: char, out: &mut String) {
    for lower in c.to_lowercase() {
        let lower = match lower {
            '0' => 'o',
            '1' | '!' | '|' => 'i',
            '3' => 'e',
            '4' | '@' => 'a',
            '5' | '$' => 's',
            '7' => 't',
            other => other,
        };
        let mut buf = [0u8; 4];
        for p in unicode_security::skeleton(lower.encode_utf8(&mut buf)) {
            for p in p.to_lowercase() {
                if !is_combining_mark(p) {
                    out.push(p);
                }
            }
        }
    }
}

/// A blocked word as matching sees it, letters and digits only.
fn fold(word: &str) -> String {
    let mut out = String::new();
    for c in word.chars() {
        fold_char(c, &mut out);
    }
    out.retain(|c| c.is_alphanumeric() || c == ' ');
    out
}

/// `text` with every blocked word (folded, in `words`) replaced by `***`, and whether any was.
/// A word matches whole: what is around it in the text is not a letter or digit, so "class" is
/// not "ass".
fn mask(text: &str, words: &[Vec<char>]) -> (String, bool) {
    // The folded text, and for each of its chars the index of the text's char it came from.
    let chars: Vec<char> = text.chars().collect();
    let (mut folded, mut from) = (Vec::new(), Vec::new());
    let mut one = String::new();
    for (i, &c) in chars.iter().enumerate() {
        one.clear();
        fold_char(c, &mut one);
        for f in one.chars() {
            folded.push(f);
            from.push(i);
        }
    }
    let mut hidden = vec![false; chars.len()];
    let mut found = false;
    for word in words {
        if word.is_empty() || word.len() > folded.len() {
            continue;
        }
        for start in 0..=folded.len() - word.len() {
            if folded[start..start + word.len()] != word[..] {
                continue;
            }
            let (first, last) = (from[start], from[start + word.len() - 1]);
            let edge_before = first == 0 || !chars[first - 1].is_alphanumeric();
            let edge_after = last + 1 == chars.len() || !chars[last + 1].is_alphanumeric();
            if edge_before && edge_after {
                found = true;
                hidden[first..=last].iter_mut().for_each(|h| *h = true);
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if hidden[i] {
            out.push_str(MASK);
            while i < chars.len() && hidden[i] {
                i += 1;
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    (out, found)
}

/// Removes from `text` anything URL-shaped: a scheme (`https://...`), a `www.` host, or a host
/// name with a dot and a top-level domain of letters (`evil.example/login`), with what follows
/// it up to the next space. Spaces left doubled by a removal are closed up, and trailing space
/// goes. Most texts have no link, and are not copied to learn that.
fn strip_links(text: &mut String) {
    if !text.split(char::is_whitespace).any(is_link) {
        text.truncate(text.trim_end().len());
        return;
    }
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive(char::is_whitespace) {
        let word = piece.trim_end_matches(char::is_whitespace);
        if is_link(word) {
            // Its space goes too, unless it is a line break.
            out.extend(piece[word.len()..].chars().filter(|c| *c == '\n'));
        } else {
            out.push_str(piece);
        }
    }
    out.truncate(out.trim_end().len());
    *text = out;
}

fn is_link(token: &str) -> bool {
    // Every shape below has a '.' or a ':'; most words have neither, and are not lower-cased.
    if !token.contains(['.', ':']) {
        return false;
    }
    let t = token.trim_matches(|c: char| !c.is_alphanumeric() && c != '/' && c != ':');
    let lower = t.to_lowercase();
    if lower.contains("://") || lower.starts_with("www.") {
        return true;
    }
    // A host: labels of letters, digits and '-', at least one dot, ending in a top-level domain
    // of 2 to 24 letters, then perhaps a path.
    let host = lower.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let tld = labels[labels.len() - 1];
    let tld_ok = (2..=24).contains(&tld.chars().count()) && tld.chars().all(char::is_alphabetic);
    let labels_ok = labels[..labels.len() - 1]
        .iter()
        .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'));
    tld_ok && labels_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::ReceiverId;

    fn alert(from: &str, message: &str, amount: Option<(&str, &str)>) -> NewAlert {
        let mut a = NewAlert::test(ReceiverId::parse("alice").unwrap());
        a.kind = "donation".into();
        a.from = Some(from.into());
        a.message = Some(message.into());
        a.amount = amount.map(|(value, currency)| Amount {
            value: value.into(),
            currency: currency.into(),
        });
        a
    }

    fn settings(json: &str) -> Settings {
        Settings::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn an_amount_below_the_minimum_of_its_currency_is_filtered() {
        let s = settings(r#"{"min_amount": {"BRL": "5.00"}}"#);
        for (value, currency, verdict) in [
            ("4.99", "BRL", Verdict::Filtered("min_amount")),
            ("5", "BRL", Verdict::Show),
            ("5.000000001", "BRL", Verdict::Show),
            ("1.00", "USD", Verdict::Show),
        ] {
            let mut a = alert("Ana", "hi", Some((value, currency)));
            assert_eq!(moderate(&s, &mut a), verdict, "{value} {currency}");
        }
        let mut no_amount = alert("Ana", "hi", None);
        assert_eq!(moderate(&s, &mut no_amount), Verdict::Show);
    }

    #[test]
    fn blocked_words_match_through_case_accents_and_look_alikes() {
        let s = settings(r#"{"blocked_words": ["idiot", "bad word"], "blocked_mode": "mask"}"#);
        for (message, expected) in [
            ("you IDIOT!", "you ***!"),
            ("you ïdíot", "you ***"),
            ("you 1d10t", "you ***"),
            // Cyrillic і and о, which look Latin.
            ("you \u{0456}di\u{043e}t", "you ***"),
            ("a bad  word here", "a bad  word here"),
            ("a BAD WORD here", "a *** here"),
            (
                "idiotic is fine, and so is semi-idiots",
                "idiotic is fine, and so is semi-idiots",
            ),
            ("nothing here", "nothing here"),
        ] {
            let mut a = alert("Ana", message, None);
            assert_eq!(moderate(&s, &mut a), Verdict::Show);
            assert_eq!(a.message.as_deref(), Some(expected), "{message}");
        }
        let mut a = alert("idiot", "hello", None);
        moderate(&s, &mut a);
        assert_eq!(a.from.as_deref(), Some("***"));
    }

    #[test]
    fn each_blocked_mode_does_its_own_thing() {
        let drop = settings(r#"{"blocked_words": ["spam"], "blocked_mode": "drop"}"#);
        let mut a = alert("Ana", "buy SPAM now", None);
        assert_eq!(moderate(&drop, &mut a), Verdict::Filtered("blocked_words"));

        let hide = settings(r#"{"blocked_words": ["spam"], "blocked_mode": "hide_message"}"#);
        let mut a = alert("Ana", "buy SPAM now", Some(("10", "BRL")));
        assert_eq!(moderate(&hide, &mut a), Verdict::Show);
        assert_eq!((a.from.as_deref(), a.message), (Some("Ana"), None));
        let mut clean = alert("Ana", "hello", None);
        moderate(&hide, &mut clean);
        assert_eq!(clean.message.as_deref(), Some("hello"));
    }

    #[test]
    fn links_are_stripped_unless_turned_off() {
        let s = Settings::new();
        for (message, expected) in [
            ("go to https://evil.example/login now", "go to now"),
            (
                "line one\nhttps://x.io\nline three",
                "line one\n\nline three",
            ),
            ("see www.evil.example", "see"),
            ("free skins at evil-site.gg/free!", "free skins at"),
            ("(http://x.io)", ""),
            ("version 1.5 is out. Nice.", "version 1.5 is out. Nice."),
            ("hello", "hello"),
            ("thanks for the stream  \n", "thanks for the stream"),
            ("  ", ""),
        ] {
            let mut a = alert("Ana", message, None);
            moderate(&s, &mut a);
            assert_eq!(a.message.as_deref(), Some(expected), "{message}");
        }
        let mut a = alert("evil.example", "hi", None);
        moderate(&s, &mut a);
        assert_eq!(a.from.as_deref(), Some(""));
        let off = settings(r#"{"strip_links": false}"#);
        let mut a = alert("Ana", "see www.example.com", None);
        moderate(&off, &mut a);
        assert_eq!(a.message.as_deref(), Some("see www.example.com"));
    }

    #[test]
    fn bad_settings_name_their_field() {
        for (json, field) in [
            (r#"{"min_amount": {"brl": "5"}}"#, "min_amount"),
            (r#"{"min_amount": {"BRL": "5,00"}}"#, "min_amount"),
            (r#"{"blocked_words": ["..."]}"#, "blocked_words"),
            (r#"{"colour": "red"}"#, "colour"),
        ] {
            let e = Settings::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{json}: {}", e.message);
        }
        assert!(Settings::parse(br#"{"blocked_mode": "explode"}"#).is_err());
        assert_eq!(settings("{}"), Settings::new());
    }
}
