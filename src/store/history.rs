//! What a receiver's history keeps of each alert that left it: how it ended, and its trail, the
//! times things happened to it from the moment it was received.
//!
//! The trail is written as it grows, in one compact form every store shares: the machine's
//! alerts carry it, the Redis library appends to it in the same form inside its strings (a queue
//! entry, the packed alert in flight, a history header), and SQLite keeps it in a column. Each
//! mark is a letter and a time in ms, with `:` and the attempt after a send or a requeue:
//! `r1760000000000s1760000000100:1t1760000000150d1760000001200`. No separators, so appending a
//! mark is one concatenation, and no spaces, so it sits in a space-separated entry as one token.

use std::fmt::Write as _;
use std::sync::Arc;

use super::machine::Millis;

/// Something that happened to an alert, as its trail names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Received,
    Held,
    Approved,
    Denied,
    /// Went out to the widgets (with the attempt).
    Sent,
    Started,
    /// Back to the head of the queue, no widget being left to show it (with the attempt).
    Requeued,
    Done,
    Expired,
    Skipped,
    Cleared,
    Filtered,
    /// Shown without its speech: the engine failed.
    SpeechFailed,
    /// Shown without its speech: the engine took too long.
    SpeechLate,
}

impl Mark {
    const ALL: [Mark; 14] = [
        Mark::Received,
        Mark::Held,
        Mark::Approved,
        Mark::Denied,
        Mark::Sent,
        Mark::Started,
        Mark::Requeued,
        Mark::Done,
        Mark::Expired,
        Mark::Skipped,
        Mark::Cleared,
        Mark::Filtered,
        Mark::SpeechFailed,
        Mark::SpeechLate,
    ];

    /// Its letter in a trail (the Redis library writes the same letters).
    pub fn letter(self) -> char {
        match self {
            Mark::Received => 'r',
            Mark::Held => 'h',
            Mark::Approved => 'a',
            Mark::Denied => 'n',
            Mark::Sent => 's',
            Mark::Started => 't',
            Mark::Requeued => 'q',
            Mark::Done => 'd',
            Mark::Expired => 'x',
            Mark::Skipped => 'k',
            Mark::Cleared => 'c',
            Mark::Filtered => 'f',
            Mark::SpeechFailed => 'u',
            Mark::SpeechLate => 'o',
        }
    }

    /// As the API names it.
    pub fn name(self) -> &'static str {
        match self {
            Mark::Received => "received",
            Mark::Held => "held",
            Mark::Approved => "approved",
            Mark::Denied => "denied",
            Mark::Sent => "sent",
            Mark::Started => "started",
            Mark::Requeued => "requeued",
            Mark::Done => "done",
            Mark::Expired => "expired",
            Mark::Skipped => "skipped",
            Mark::Cleared => "cleared",
            Mark::Filtered => "filtered",
            Mark::SpeechFailed => "speech_failed",
            Mark::SpeechLate => "speech_timed_out",
        }
    }

    fn of_letter(c: u8) -> Option<Mark> {
        Mark::ALL.into_iter().find(|m| m.letter() as u8 == c)
    }

    /// How an alert that ends with this mark is recorded, if it ends one.
    pub fn ends(self) -> bool {
        matches!(
            self,
            Mark::Done
                | Mark::Expired
                | Mark::Skipped
                | Mark::Cleared
                | Mark::Filtered
                | Mark::Denied
        )
    }

    /// The status a history entry names (one of the marks that end an alert).
    pub fn parse_status(s: &str) -> Option<Mark> {
        Mark::ALL.into_iter().find(|m| m.ends() && m.name() == s)
    }
}

/// One mark of a trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub mark: Mark,
    pub at: Millis,
    pub attempt: Option<u32>,
}

/// An alert's trail, in its compact form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trail(String);

impl Trail {
    /// The trail of an alert received at `at`.
    pub fn received(at: Millis) -> Self {
        let mut t = Trail(String::with_capacity(64));
        t.push(Mark::Received, at, None);
        t
    }

    /// A trail as a store kept it. Not checked: [`Trail::steps`] skips what it cannot read.
    pub fn from_kept(s: impl Into<String>) -> Self {
        Trail(s.into())
    }

    pub fn push(&mut self, mark: Mark, at: Millis, attempt: Option<u32>) {
        self.0.push(mark.letter());
        let _ = write!(self.0, "{at}");
        if let Some(n) = attempt {
            let _ = write!(self.0, ":{n}");
        }
    }

    /// This trail with one more mark.
    pub fn and(mut self, mark: Mark, at: Millis, attempt: Option<u32>) -> Self {
        self.push(mark, at, attempt);
        self
    }

    /// The trail of an alert in flight as of its last send: without the mark of its start,
    /// which, if there is one, is the last (an alert starts once per send, and only a send
    /// follows a send). What the embedded store keeps on disk: a restart sends the alert again.
    pub fn as_sent(&self) -> Trail {
        let started = self.0.rfind(Mark::Started.letter());
        let sent = self.0.rfind(Mark::Sent.letter());
        match started {
            Some(at) if sent.is_none_or(|s| s < at) => Trail(self.0[..at].to_owned()),
            _ => self.clone(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its marks, in order. A mark that does not read (an unknown letter from a newer store) is
    /// skipped rather than lose the rest.
    pub fn steps(&self) -> Vec<Step> {
        let b = self.0.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        let number = |i: &mut usize| {
            let start = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            self.0[start..*i].parse::<u64>().ok()
        };
        while i < b.len() {
            let letter = b[i];
            i += 1;
            let at = number(&mut i);
            let mut attempt = None;
            if i < b.len() && b[i] == b':' {
                i += 1;
                attempt = number(&mut i).and_then(|n| u32::try_from(n).ok());
            }
            if let (Some(mark), Some(at)) = (Mark::of_letter(letter), at) {
                steps.push(Step { mark, at, attempt });
            }
        }
        steps
    }
}

/// One alert of a receiver's history.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: Arc<str>,
    /// How it ended: done, expired, skipped, cleared, filtered or denied.
    pub status: Mark,
    pub trail: Trail,
    /// The alert's JSON, as widgets got it (or would have).
    pub json: Arc<str>,
}

/// A page of a receiver's history, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    pub records: Vec<Record>,
    /// There are older records past this page.
    pub more: bool,
}

impl Page {
    /// The page of `history` (newest first) after the record of alert `before` (from the
    /// newest when `None`; empty when `before` is no longer in history).
    pub fn of<'a>(
        history: impl Iterator<Item = &'a Record>,
        before: Option<&str>,
        limit: usize,
    ) -> Page {
        let mut history = history.peekable();
        if let Some(before) = before {
            if !history.by_ref().any(|r| &*r.id == before) {
                return Page::default();
            }
        }
        let records: Vec<Record> = history.by_ref().take(limit).cloned().collect();
        Page {
            records,
            more: history.peek().is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trail_reads_back_as_written() {
        let t = Trail::received(10)
            .and(Mark::Sent, 20, Some(1))
            .and(Mark::Requeued, 25, Some(1))
            .and(Mark::Sent, 30, Some(2))
            .and(Mark::Started, 31, None)
            .and(Mark::Done, 40, None);
        assert_eq!(t.as_str(), "r10s20:1q25:1s30:2t31d40");
        let steps = t.steps();
        assert_eq!(steps.len(), 6);
        assert_eq!(
            steps[3],
            Step {
                mark: Mark::Sent,
                at: 30,
                attempt: Some(2)
            }
        );
        // As sent: the start after the last send goes, an earlier one stays.
        let again = t
            .clone()
            .and(Mark::Requeued, 41, Some(2))
            .and(Mark::Sent, 42, Some(3));
        assert_eq!(again.clone().and(Mark::Started, 43, None).as_sent(), again);
        assert_eq!(again.as_sent(), again);
        // An unknown letter is skipped, the rest kept.
        let odd = Trail::from_kept("r10z15d20");
        assert_eq!(odd.steps().len(), 2);
    }
}
