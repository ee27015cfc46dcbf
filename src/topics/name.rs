//! Topic names and the patterns subscriptions are made of.

use std::fmt;
use std::sync::Arc;

use crate::alert::FieldError;

/// A topic: 1 to 64 of `[A-Za-z0-9_:.-]`, such as `trending:PL`.
///
/// The character set keeps a name safe everywhere it goes unescaped: a Redis key (no braces, so
/// no hash tag of its own), a URL query, a space-separated notice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Topic(Arc<str>);

fn topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-')
}

impl Topic {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        if (1..=64).contains(&s.len()) && s.bytes().all(topic_byte) {
            Ok(Self(s.into()))
        } else {
            Err(FieldError::invalid(
                "topics",
                format!("a topic is 1 to 64 of A-Z, a-z, 0-9, '_', ':', '.' and '-'; got {s:?}"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic a receiver's feed goes out on to its docks on this node (see [`crate::feed`]).
    /// Its `#` is outside every name a client may give, and no pattern matches it but itself:
    /// it is never published, never kept in a topic's log, and no token or public pattern,
    /// not even `*`, reaches it.
    pub fn feed(receiver: &crate::alert::ReceiverId) -> Self {
        Self(format!("#feed:{receiver}").into())
    }

    /// Whether this is a topic of the node's own ([`Topic::feed`]).
    pub fn is_internal(&self) -> bool {
        self.0.starts_with('#')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a subscription or a token names: one topic (`trending:PL`), or every topic under a
/// prefix (`trending:*`, and `*` for all).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    Exactly(Topic),
    /// Every topic that starts with this (which may be empty).
    Under(Arc<str>),
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        match s.strip_suffix('*') {
            Some(prefix) if prefix.len() < 64 && prefix.bytes().all(topic_byte) => {
                Ok(Pattern::Under(prefix.into()))
            }
            Some(_) => Err(FieldError::invalid(
                "topics",
                format!("a pattern is a topic's first characters then '*'; got {s:?}"),
            )),
            None => Topic::parse(s).map(Pattern::Exactly),
        }
    }

    pub fn matches(&self, topic: &Topic) -> bool {
        match self {
            Pattern::Exactly(t) => t == topic,
            Pattern::Under(prefix) => !topic.is_internal() && topic.as_str().starts_with(&**prefix),
        }
    }

    /// Whether every topic this pattern matches, `other` matches too.
    pub fn within(&self, other: &Pattern) -> bool {
        match (self, other) {
            (_, Pattern::Under(prefix)) => self.as_str().starts_with(&**prefix),
            (Pattern::Exactly(a), Pattern::Exactly(b)) => a == b,
            (Pattern::Under(_), Pattern::Exactly(_)) => false,
        }
    }

    /// As written: the topic, or the prefix (without its `*`).
    fn as_str(&self) -> &str {
        match self {
            Pattern::Exactly(t) => t.as_str(),
            Pattern::Under(prefix) => prefix,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exactly(t) => f.write_str(t.as_str()),
            Pattern::Under(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// A comma-separated list of patterns (a query's `topics`, a flag's value).
pub fn patterns(list: &str) -> Result<Vec<Pattern>, FieldError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Pattern::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[test]
    fn names_keep_to_their_characters_and_length() {
        for ok in ["trending:PL", "a", "x.y-z_1", &"t".repeat(64)] {
            assert!(Topic::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "{tag}", "é", "a*", "a,b", &"t".repeat(65)] {
            assert!(Topic::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_pattern_matches_its_topic_or_every_topic_under_its_prefix() {
        let under = Pattern::parse("trending:*").unwrap();
        assert!(under.matches(&topic("trending:PL")));
        assert!(!under.matches(&topic("trend")));
        assert!(Pattern::parse("*").unwrap().matches(&topic("anything")));
        // A receiver's feed is the node's own: no pattern a client can write reaches it.
        let feed = Topic::feed(&crate::alert::ReceiverId::parse("ana").unwrap());
        assert!(!Pattern::parse("*").unwrap().matches(&feed));
        assert!(Topic::parse(feed.as_str()).is_err() && Pattern::parse("#*").is_err());
        assert!(Pattern::Exactly(feed.clone()).matches(&feed));
        let one = Pattern::parse("trending:PL").unwrap();
        assert!(one.matches(&topic("trending:PL")) && !one.matches(&topic("trending:PLX")));
        assert!(Pattern::parse("a*b").is_err() && Pattern::parse("{*").is_err());
        assert_eq!(under.to_string(), "trending:*");
    }

    #[test]
    fn a_pattern_is_within_another_only_if_all_it_matches_the_other_does() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert!(p("trending:PL").within(&p("trending:*")));
        assert!(p("trending:PL:*").within(&p("trending:*")));
        assert!(p("trending:*").within(&p("*")));
        assert!(!p("trending:*").within(&p("trending:PL")));
        assert!(!p("trend*").within(&p("trending:*")));
        assert!(p("a").within(&p("a")) && !p("a").within(&p("b")));
    }
}
