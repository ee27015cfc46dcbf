//! Who may publish, which widget may watch which receiver, and who may control it.
//!
//! Publish keys are compared through HMAC tags, so the comparison runs in constant time and the
//! keys themselves are not kept. A receiver's tokens are an HMAC-SHA256 of its id and their
//! purpose under the secret: a widget token opens one receiver's widget and nothing else (it is
//! shown on stream, in OBS's source settings, and may leak), and a dashboard token controls one
//! receiver's queue (pause, skip, clear...) and nothing else. Each kind has a generation, kept by
//! the store and 0 until the streamer first rotates it: a token is made for one generation, so a
//! rotation retires every token made before it at once, on every node.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::alert::ReceiverId;

type HmacSha256 = Hmac<Sha256>;

/// 244 random bits (two v4 UUIDs) as 64 hex characters, from a CSPRNG the OS seeds: uuid's
/// `fast-rng` draws from `rand`'s thread generator rather than a `getrandom` call per id, which
/// was one system call per published alert.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A fresh publish key for a node started without one.
pub fn random_publish_key() -> String {
    format!("pk_{}", uuid::Uuid::new_v4().simple())
}

fn mac(key: &[u8]) -> HmacSha256 {
    // unwrap: HMAC accepts keys of any length.
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// The publish keys this node accepts.
pub struct PublishKeys {
    /// HMAC under a per-process key, under which configured keys and presented keys are both
    /// tagged; keyed once, so a publish hashes its key and nothing more.
    tagger: HmacSha256,
    tags: Vec<Vec<u8>>,
}

impl PublishKeys {
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        let tagger = mac(random_secret().as_bytes());
        let tags = keys
            .iter()
            .map(|k| {
                let mut m = tagger.clone();
                m.update(k.as_ref().as_bytes());
                m.finalize().into_bytes().to_vec()
            })
            .collect();
        Self { tagger, tags }
    }

    /// Which of the keys `presented` is, if any.
    pub fn find(&self, presented: &str) -> Option<usize> {
        // Every configured key is tried, so the time taken does not tell which one matched.
        self.tags.iter().enumerate().fold(None, |found, (i, tag)| {
            let mut m = self.tagger.clone();
            m.update(presented.as_bytes());
            let matched = m.verify_slice(tag).is_ok();
            found.or(matched.then_some(i))
        })
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}

/// What a receiver's token opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The widget: it shows alerts, and controls nothing.
    Widget,
    /// The controls and the dock.
    Dashboard,
}

/// The current generation of each kind of a receiver's token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generations {
    pub widget: u64,
    pub dashboard: u64,
}

impl Generations {
    pub fn of(&self, purpose: Purpose) -> u64 {
        match purpose {
            Purpose::Widget => self.widget,
            Purpose::Dashboard => self.dashboard,
        }
    }
}

impl Purpose {
    /// As the API and the store name it.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Widget => "widget",
            Purpose::Dashboard => "dashboard",
        }
    }
}

/// Makes and checks receivers' tokens.
#[derive(Clone)]
pub struct ReceiverTokens {
    /// HMAC keyed with the secret, cloned for each tag: keying hashes two blocks, which every
    /// publish (its status link) would otherwise pay again.
    keyed: HmacSha256,
}

impl ReceiverTokens {
    pub fn new(secret: &str) -> Self {
        Self {
            keyed: mac(secret.as_bytes()),
        }
    }

    fn mac_for(&self, purpose: Purpose, receiver: &ReceiverId, generation: u64) -> HmacSha256 {
        let mut m = self.keyed.clone();
        // The purpose is part of the message, so one kind of token is never taken for another.
        m.update(match purpose {
            Purpose::Widget => b"cuebox widget v1\0".as_slice(),
            Purpose::Dashboard => b"cuebox dashboard v1\0".as_slice(),
        });
        m.update(receiver.as_str().as_bytes());
        // Generation 0 is the message as it was before tokens could be rotated, so URLs made
        // then still open.
        if generation > 0 {
            m.update(b"\0");
            m.update(generation.to_string().as_bytes());
        }
        m
    }

    /// The widget token of generation 0, which a receiver has until it is first rotated.
    pub fn token(&self, receiver: &ReceiverId) -> String {
        self.token_for(Purpose::Widget, receiver, 0)
    }

    pub fn token_for(&self, purpose: Purpose, receiver: &ReceiverId, generation: u64) -> String {
        let tag = self.mac_for(purpose, receiver, generation).finalize();
        hex(&tag.into_bytes())
    }

    /// Checks a widget token of generation 0.
    pub fn verify(&self, receiver: &ReceiverId, token: &str) -> bool {
        self.verify_for(Purpose::Widget, receiver, 0, token)
    }

    /// Checks a token in constant time (`verify_slice`).
    pub fn verify_for(
        &self,
        purpose: Purpose,
        receiver: &ReceiverId,
        generation: u64,
        token: &str,
    ) -> bool {
        match unhex(token) {
            Some(bytes) => self
                .mac_for(purpose, receiver, generation)
                .verify_slice(&bytes)
                .is_ok(),
            None => false,
        }
    }
}

impl ReceiverTokens {
    fn alert_mac(&self, receiver: &ReceiverId, id: &str) -> HmacSha256 {
        let mut m = self.keyed.clone();
        m.update(b"cuebox alert status v1\0");
        m.update(receiver.as_str().as_bytes());
        m.update(b"\0");
        m.update(id.as_bytes());
        m
    }

    /// The signature of the read-only status link of one alert: it opens that alert's status
    /// and nothing else. Not rotated with the receiver's tokens, so a donor's link keeps working.
    pub fn alert_signature(&self, receiver: &ReceiverId, id: &str) -> String {
        hex(&self.alert_mac(receiver, id).finalize().into_bytes())
    }

    /// Checks a status link's signature, in constant time.
    pub fn verify_alert(&self, receiver: &ReceiverId, id: &str, signature: &str) -> bool {
        unhex(signature).is_some_and(|b| self.alert_mac(receiver, id).verify_slice(&b).is_ok())
    }
}

impl ReceiverTokens {
    fn topics_mac(&self, grant: &str) -> HmacSha256 {
        let mut m = self.keyed.clone();
        m.update(b"cuebox topics v1\0");
        m.update(grant.as_bytes());
        m
    }

    /// A subscribe token for broadcast topics: the patterns it grants, comma-separated, then `~`
    /// and the lowercase hex HMAC-SHA256 of them (`trending:*,news:PL~9f2c...`). It carries what
    /// it grants, so any node checks it with the secret alone.
    pub fn topic_token(&self, patterns: &[crate::topics::Pattern]) -> String {
        let grant = patterns
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let tag = hex(&self.topics_mac(&grant).finalize().into_bytes());
        format!("{grant}~{tag}")
    }

    /// The patterns a subscribe token grants, if its signature holds (checked in constant time).
    pub fn topic_grant(&self, token: &str) -> Option<Vec<crate::topics::Pattern>> {
        let (grant, tag) = token.rsplit_once('~')?;
        let tag = unhex(tag)?;
        self.topics_mac(grant).verify_slice(&tag).ok()?;
        crate::topics::name::patterns(grant).ok()
    }
}

fn hex(bytes: &[u8]) -> String {
    // By hand rather than `format!` per byte: every publish signs its status link.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_token_grants_its_patterns_and_nothing_once_changed() {
        let tokens = ReceiverTokens::new("s3cret");
        let patterns = crate::topics::name::patterns("trending:*,news:PL").unwrap();
        let token = tokens.topic_token(&patterns);
        assert!(token.starts_with("trending:*,news:PL~"), "{token}");
        assert_eq!(tokens.topic_grant(&token), Some(patterns));
        let widened = token.replacen("news:PL", "news:*", 1);
        assert_eq!(tokens.topic_grant(&widened), None);
        assert_eq!(ReceiverTokens::new("other").topic_grant(&token), None);
        assert_eq!(tokens.topic_grant("trending:*"), None);
    }

    #[test]
    fn tokens_and_signatures_are_the_hmac_they_always_were() {
        // Pasted into OBS and sent to donors: a change of how they are made must not change them.
        let tokens = ReceiverTokens::new("s3cret");
        let alice = ReceiverId::parse("alice").unwrap();
        assert_eq!(
            tokens.token(&alice),
            "79e149bbef294a53eb681cbcf783b117dd876460aabaab58f716d10340be1b89"
        );
        assert_eq!(
            tokens.alert_signature(&alice, "id-1"),
            "4357804dcc7be17a6c9b833c558c5b53768d058b9ba771e7e1b2e08726daca0c"
        );
    }

    #[test]
    fn a_token_opens_its_receiver_only() {
        let tokens = ReceiverTokens::new("s3cret");
        let alice = ReceiverId::parse("alice").unwrap();
        let bob = ReceiverId::parse("bob").unwrap();
        let t = tokens.token(&alice);
        assert!(tokens.verify(&alice, &t));
        assert!(!tokens.verify(&bob, &t));
        assert!(!ReceiverTokens::new("other").verify(&alice, &t));
        assert!(!tokens.verify(&alice, "zz"));
        assert!(!tokens.verify(&alice, &t.replace('a', "é")));
    }

    #[test]
    fn a_widget_token_controls_nothing_and_a_dashboard_token_shows_nothing() {
        let tokens = ReceiverTokens::new("s3cret");
        let alice = ReceiverId::parse("alice").unwrap();
        let widget = tokens.token(&alice);
        let dashboard = tokens.token_for(Purpose::Dashboard, &alice, 0);
        assert_ne!(widget, dashboard);
        assert!(tokens.verify_for(Purpose::Dashboard, &alice, 0, &dashboard));
        assert!(!tokens.verify_for(Purpose::Dashboard, &alice, 0, &widget));
        assert!(!tokens.verify(&alice, &dashboard));
    }

    #[test]
    fn a_token_opens_its_generation_only() {
        let tokens = ReceiverTokens::new("s3cret");
        let alice = ReceiverId::parse("alice").unwrap();
        let first = tokens.token_for(Purpose::Widget, &alice, 0);
        let second = tokens.token_for(Purpose::Widget, &alice, 1);
        assert_ne!(first, second);
        assert_eq!(
            first,
            tokens.token(&alice),
            "generation 0 is the token of before"
        );
        assert!(tokens.verify_for(Purpose::Widget, &alice, 1, &second));
        assert!(!tokens.verify_for(Purpose::Widget, &alice, 1, &first));
        assert!(!tokens.verify_for(Purpose::Widget, &alice, 0, &second));
    }

    #[test]
    fn publish_keys_accept_only_their_own() {
        let keys = PublishKeys::new(&["one", "two"]);
        assert_eq!((keys.find("one"), keys.find("two")), (Some(0), Some(1)));
        assert_eq!((keys.find("three"), keys.find("")), (None, None));
    }
}
