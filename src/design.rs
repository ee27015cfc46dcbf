//! A receiver's designs: how its widget shows each kind of alert.
//!
//! A streamer (or the dock, with the dashboard token) sets them with
//! `PUT /receivers/{r}/designs`: one design per alert `kind`, and a `default` design for kinds
//! that have none; under all of them, a built-in design per kind, so a fresh install looks good
//! with none set. A design is data only (no script), checked strictly here: an unknown field or a
//! bad value is a 400 naming it, so what a leaked dock token can do to a stream is bounded by
//! this file.
//!
//! A design holds an ordered list of variations, each a condition and the parts of the design it
//! overrides. The node that sends an alert resolves its look ([`Designs::resolve`]) and sends it
//! with the alert, so every widget shows the same thing. Resolving is a pure function of the
//! designs and the alert (a `random` variation draws from a hash of the alert's id), so every
//! node resolves an alert alike, and the same alert sent again looks the same.
//!
//! Templates are checked here and filled in by the widget, as text: what they make is never
//! parsed as HTML.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alert::{Decimal, FieldError};

/// Custom CSS of one design or variation, in bytes.
pub const MOST_CSS_BYTES: usize = 16 * 1024;
/// Designs of one receiver (kinds, `default` among them).
pub const MOST_DESIGNS: usize = 32;
/// Variations of one design.
pub const MOST_VARIATIONS: usize = 16;
/// Characters of a `title` or `body` template.
pub const MOST_TEMPLATE_CHARS: usize = 500;
/// The placeholders a template may hold, besides `{data.FIELD}`.
pub const PLACEHOLDERS: [&str; 5] = ["from", "amount", "currency", "message", "kind"];
/// The design of kinds that have none of their own.
pub const DEFAULT_KIND: &str = "default";
/// The built-in sound, served with the widget's assets.
pub const BUILT_IN_SOUND: &str = "/widget-assets/chime.wav";

// ---- the parts of a design, each checked as it is read ----

/// Where the image sits against the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    ImageAbove,
    ImageLeft,
    ImageRight,
    ImageBehind,
    TextOnly,
}

/// The built-in animations; the widget's stylesheet holds each one, in and out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Motion {
    None,
    Fade,
    SlideFromLeft,
    SlideFromRight,
    SlideFromTop,
    SlideFromBottom,
    Zoom,
    Bounce,
    Pop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Animation {
    pub name: Motion,
    #[serde(default = "AnimationMs::standard")]
    pub duration_ms: AnimationMs,
}

/// The text's shadow, from a few that read well over any game footage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shadow {
    None,
    Soft,
    Strong,
    Outline,
}

/// A whole number in a range, with the message that says so.
macro_rules! bounded {
    ($name:ident, $lo:expr, $hi:expr, $what:expr) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "u64")]
        pub struct $name(pub u32);

        impl TryFrom<u64> for $name {
            type Error = String;
            fn try_from(n: u64) -> Result<Self, String> {
                if ($lo..=$hi).contains(&n) {
                    Ok(Self(n as u32))
                } else {
                    Err(format!(
                        "{} must be from {} to {}, not {n}",
                        $what, $lo, $hi
                    ))
                }
            }
        }
    };
}

bounded!(AnimationMs, 0, 5_000, "an animation's duration_ms");
bounded!(DurationMs, 1_000, 60_000, "duration_ms");
bounded!(FontSize, 8, 200, "font_size (px, on a 1080 px tall canvas)");

impl AnimationMs {
    fn standard() -> Self {
        Self(400)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct FontWeight(pub u32);

impl TryFrom<u64> for FontWeight {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, String> {
        if (100..=900).contains(&n) && n.is_multiple_of(100) {
            Ok(Self(n as u32))
        } else {
            Err(format!("font_weight must be 100, 200, ... or 900, not {n}"))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64")]
pub struct Volume(pub f64);

impl TryFrom<f64> for Volume {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("volume must be from 0 to 1, not {v}"))
        }
    }
}

/// A string checked by `$check`, which answers why it is not one.
macro_rules! checked_string {
    ($name:ident, $check:expr) => {
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(pub Arc<str>);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s).map(|()| Self(s.into()))
            }
        }
    };
}

// `#rgb`, `#rgba`, `#rrggbb` or `#rrggbbaa`: nothing that could carry anything but a colour.
checked_string!(Color, |s| {
    let hex = s.strip_prefix('#').unwrap_or("");
    if [3, 4, 6, 8].contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "a colour is #rgb, #rgba, #rrggbb or #rrggbbaa (hex digits), not {s:?}"
        ))
    }
});

// Family names, quoted or not, separated by commas; the widget appends colour emoji families.
checked_string!(FontFamily, |s| {
    let ok = !s.trim().is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_alphanumeric() || " ,-_'\"".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "font_family is up to 200 characters of family names (letters, digits, spaces, \
             quotes, commas, - and _), not {s:?}"
        ))
    }
});

// An image or sound: an http(s) URL, the built-in sound, or "" for none.
checked_string!(MediaUrl, |s| {
    let http = s.starts_with("https://") || s.starts_with("http://");
    let clean = !s
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'<>\\".contains(c));
    if s.is_empty() || s == BUILT_IN_SOUND || (http && clean && s.len() <= 2048) {
        Ok(())
    } else {
        Err(format!(
            "a media URL is an http(s) URL of up to 2048 characters with no spaces or quotes, \
             {BUILT_IN_SOUND:?}, or \"\" for none; not {s:?}"
        ))
    }
});

checked_string!(Template, |s| {
    if s.chars().count() > MOST_TEMPLATE_CHARS {
        return Err(format!(
            "a template is at most {MOST_TEMPLATE_CHARS} characters"
        ));
    }
    placeholders(s).map(drop)
});

// Custom CSS: the widget scopes each rule to the alert's stage, through the CSS object model,
// so no text here can reach beyond it; @import is refused (a constructed stylesheet ignores it
// anyway, and a refusal says so rather than leaving it silently dead).
checked_string!(Css, |s| {
    if s.len() > MOST_CSS_BYTES {
        return Err(format!(
            "css is at most {MOST_CSS_BYTES} bytes, not {}",
            s.len()
        ));
    }
    if s.to_ascii_lowercase().contains("@import") {
        return Err("css may not @import: put the rules themselves here".into());
    }
    Ok(())
});

// A BCP 47 language tag, as Intl takes it: `en-US`, `pt-BR`, `de`.
checked_string!(Locale, |s| {
    let mut parts = s.split('-');
    let language = parts.next().unwrap_or("");
    let ok = (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && parts
            .all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && s.len() <= 35;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "locale is a language tag such as \"en-US\" or \"pt-BR\", not {s:?}"
        ))
    }
});

/// The placeholders of a template, in order: each `{name}` (or `{data.FIELD}`); `{{` and `}}`
/// stand for braces.
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let after = &rest[i + 1..];
        if rest[i..].starts_with("{{") || rest[i..].starts_with("}}") {
            rest = &after[1..];
            continue;
        }
        if rest.as_bytes()[i] == b'}' {
            return Err("a lone } in a template: write }} for a brace".into());
        }
        let Some(end) = after.find('}') else {
            return Err("a { without its } in a template: write {{ for a brace".into());
        };
        let name = &after[..end];
        let field_ok = |f: &str| {
            (1..=64).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        let ok = PLACEHOLDERS.contains(&name) || name.strip_prefix("data.").is_some_and(field_ok);
        if !ok {
            return Err(format!(
                "unknown placeholder {{{name}}}: a template may hold {{from}}, {{amount}}, \
                 {{currency}}, {{message}}, {{kind}} and {{data.FIELD}}"
            ));
        }
        found.push(name);
        rest = &after[end + 1..];
    }
    Ok(found)
}

// ---- designs ----

/// What a design or a variation sets; what it leaves unset comes from under it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Look {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<Template>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Template>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub font_family: Option<FontFamily>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub font_size: Option<FontSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub font_weight: Option<FontWeight>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_color: Option<Color>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlight_color: Option<Color>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_shadow: Option<Shadow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub animation_in: Option<Animation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub animation_out: Option<Animation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<MediaUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sound: Option<MediaUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<DurationMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub css: Option<Css>,
}

impl Look {
    /// Sets over this look whatever `top` sets.
    fn cover(&mut self, top: &Look) {
        macro_rules! each {
            ($($f:ident),*) => { $( if top.$f.is_some() { self.$f = top.$f.clone(); } )* };
        }
        each!(
            layout,
            title,
            body,
            font_family,
            font_size,
            font_weight,
            text_color,
            highlight_color,
            text_shadow,
            animation_in,
            animation_out,
            image,
            sound,
            volume,
            duration_ms,
            css
        );
    }
}

/// When a variation applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// The alert's amount is at least this, in this currency.
    MinAmount(MinAmount),
    /// A field of the alert's `data` equals this (a number or boolean by its JSON text).
    Data(DataMatch),
    /// A draw: the random variations of a design share one, each winning by its weight.
    Random(Weight),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinAmount {
    pub value: AmountValue,
    pub currency: Currency,
}

checked_string!(AmountValue, |s| match Decimal::parse(s) {
    Some(_) => Ok(()),
    None => Err(format!(
        "an amount's value is a decimal string such as \"100\" or \"10.50\", not {s:?}"
    )),
});

checked_string!(Currency, |s| {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "a currency is 3 capital letters (ISO 4217), not {s:?}"
        ))
    }
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMatch {
    pub field: DataField,
    pub equals: Value,
}

checked_string!(DataField, |s| {
    if (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!(
            "a data field is 1 to 64 letters, digits or _, not {s:?}"
        ))
    }
});

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weight {
    pub weight: WeightValue,
}

bounded!(WeightValue, 1, 1_000_000, "a random variation's weight");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<VariationName>,
    pub when: Condition,
    #[serde(default)]
    pub set: Look,
}

checked_string!(VariationName, |s| {
    if (1..=64).contains(&s.chars().count()) && !s.chars().any(char::is_control) {
        Ok(())
    } else {
        Err("a variation's name is 1 to 64 characters".into())
    }
});

/// One kind's design: its look, and its variations in the order they are tried.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Design {
    #[serde(flatten)]
    pub look: Look,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variations: Vec<Variation>,
}

/// A receiver's designs, as `PUT /receivers/{r}/designs` takes them and the store keeps them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Designs {
    /// How amounts are written (Intl's locale); `en-US` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
    /// Text-to-speech of the donor's name and message; off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tts: Option<Tts>,
    /// The pause between the end of one alert and the start of the next, in ms; see
    /// [`Designs::gap`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_gap_ms: Option<GapMs>,
    pub designs: BTreeMap<String, Design>,
}

bounded!(GapMs, 0, 3_000, "alert_gap_ms");

/// The gap between alerts when neither the receiver nor the node sets one.
pub const DEFAULT_GAP: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether and how alerts are read out (see `crate::speech`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tts {
    #[serde(default)]
    pub enabled: bool,
    /// Per currency, the least amount read out; an alert in another currency, or with no
    /// amount, is read out only if this names no currency at all.
    #[serde(default)]
    pub min_amount: BTreeMap<Currency, AmountValue>,
    #[serde(default = "Voice::standard")]
    pub voice: Voice,
    #[serde(default = "Rate::standard")]
    pub rate: Rate,
    #[serde(default = "MaxChars::standard")]
    pub max_chars: MaxChars,
}

bounded!(Rate, 80, 450, "tts.rate (words a minute)");
bounded!(MaxChars, 1, 500, "tts.max_chars");

impl Rate {
    fn standard() -> Self {
        Self(175)
    }
}

impl MaxChars {
    fn standard() -> Self {
        Self(200)
    }
}

// A voice as the engine names it: `en`, `pt-br`, `en-us+f3`.
checked_string!(Voice, |s| {
    let ok = (1..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tts.voice is 1 to 40 letters, digits, -, _ or + (a voice of the engine), not {s:?}"
        ))
    }
});

impl Voice {
    fn standard() -> Self {
        Self("en".into())
    }
}

impl Tts {
    /// Whether an alert with this amount (value, currency) is read out.
    pub fn reads(&self, amount: Option<(&str, &str)>) -> bool {
        if !self.enabled {
            return false;
        }
        if self.min_amount.is_empty() {
            return true;
        }
        let Some((value, currency)) = amount else {
            return false;
        };
        let min = self
            .min_amount
            .iter()
            .find(|(c, _)| &*c.0 == currency)
            .map(|(_, v)| v);
        match (min, Decimal::parse(value)) {
            (Some(min), Some(value)) => Decimal::parse(&min.0).is_some_and(|m| value >= m),
            _ => false,
        }
    }
}

/// A body of `PUT /receivers/{r}/designs`: the designs, and, if the editor read a version
/// before changing it, that version (a put over a newer one is refused, so two editors never
/// undo each other unawares).
pub struct Put {
    pub designs: Designs,
    pub expected: Option<u64>,
}

/// Parses `value` at `path` into `T`, naming the field that is wrong.
fn field<T: serde::de::DeserializeOwned>(value: Value, path: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner = e.path().to_string();
        let at = match inner.as_str() {
            "." | "" => path.to_owned(),
            p if path.is_empty() => p.to_owned(),
            p if p.starts_with('[') => format!("{path}{p}"),
            p => format!("{path}.{p}"),
        };
        FieldError::invalid(&at, format!("{at}: {}", e.inner()))
    })
}

fn object(value: Value, path: &str) -> Result<Map<String, Value>, FieldError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(FieldError::invalid(
            path,
            format!("{path} must be a JSON object"),
        )),
    }
}

fn kind_ok(kind: &str) -> bool {
    (1..=32).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Design {
    fn parse(value: Value, path: &str) -> Result<Self, FieldError> {
        let mut map = object(value, path)?;
        let variations = match map.remove("variations") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => field::<Vec<Variation>>(v, &format!("{path}.variations"))?,
        };
        if variations.len() > MOST_VARIATIONS {
            let at = format!("{path}.variations");
            return Err(FieldError::invalid(
                &at,
                format!("{at}: at most {MOST_VARIATIONS} variations"),
            ));
        }
        let look = field::<Look>(Value::Object(map), path)?;
        Ok(Self { look, variations })
    }
}

impl Put {
    pub fn parse(body: &[u8]) -> Result<Self, FieldError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| FieldError {
            code: "invalid_json",
            message: format!("the body is not valid JSON: {e}"),
            field: None,
        })?;
        let mut map = object(value, "body")?;
        let expected = match map.remove("version") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                FieldError::invalid("version", "version is the whole number GET answered")
            })?),
        };
        let locale = match map.remove("locale") {
            None | Some(Value::Null) => None,
            Some(v) => Some(field::<Locale>(v, "locale")?),
        };
        let tts = match map.remove("tts") {
            None | Some(Value::Null) => None,
            Some(v) => Some(field::<Tts>(v, "tts")?),
        };
        let alert_gap_ms = match map.remove("alert_gap_ms") {
            None | Some(Value::Null) => None,
            Some(v) => Some(field::<GapMs>(v, "alert_gap_ms")?),
        };
        let kinds = object(
            map.remove("designs").unwrap_or(Value::Object(Map::new())),
            "designs",
        )?;
        if let Some(unknown) = map.keys().next() {
            return Err(FieldError::invalid(
                unknown,
                format!(
                    "unknown field {unknown:?}: the body holds designs, and may hold locale, tts, \
                     alert_gap_ms and version"
                ),
            ));
        }
        if kinds.len() > MOST_DESIGNS {
            return Err(FieldError::invalid(
                "designs",
                format!("designs: at most {MOST_DESIGNS} kinds"),
            ));
        }
        let mut designs = BTreeMap::new();
        for (kind, design) in kinds {
            let path = format!("designs.{kind}");
            if !kind_ok(&kind) {
                return Err(FieldError::invalid(
                    &path,
                    format!("{path}: a kind is 1 to 32 of a-z, 0-9, _ and -, or \"default\""),
                ));
            }
            designs.insert(kind, Design::parse(design, &path)?);
        }
        Ok(Self {
            designs: Designs {
                locale,
                tts,
                alert_gap_ms,
                designs,
            },
            expected,
        })
    }
}

impl Designs {
    /// Reads designs the store kept (written by [`Designs::to_json`], so they parse).
    pub fn parse_stored(json: &str) -> Result<Self, FieldError> {
        Put::parse(json.as_bytes()).map(|p| p.designs)
    }

    /// The designs of `receiver` the store kept, if any; the built-in ones (with a warning)
    /// where none were put, or what was kept no longer parses.
    pub fn kept_or_built_in(receiver: &crate::alert::ReceiverId, json: Option<&str>) -> Self {
        let Some(json) = json else {
            return Self::default();
        };
        Self::parse_stored(json).unwrap_or_else(|e| {
            tracing::warn!(%receiver, error = %e.message, "stored designs do not parse; using the built-in ones");
            Self::default()
        })
    }

    pub fn to_json(&self) -> String {
        // unwrap: strings, numbers and maps with string keys.
        serde_json::to_string(self).expect("designs serialize")
    }

    /// The pause between the end of one alert and the start of the next, if these designs set
    /// one (else the node's `--alert-gap-ms`). At most 3 s, well inside the start timeout (5 s by
    /// default), which counts from the store's send.
    pub fn gap(&self) -> Option<std::time::Duration> {
        self.alert_gap_ms
            .map(|g| std::time::Duration::from_millis(g.0.into()))
    }

    /// Whether an alert of `kind` may look otherwise than by its kind alone: its design has
    /// variations.
    pub fn varies(&self, kind: &str) -> bool {
        let own = self.designs.get(kind).filter(|_| kind != DEFAULT_KIND);
        own.or_else(|| self.designs.get(DEFAULT_KIND))
            .is_some_and(|d| !d.variations.is_empty())
    }

    /// The look alert `alert` (its JSON) is shown with, every field set.
    pub fn resolve(&self, alert: &Value) -> Resolved {
        let kind = alert.get("kind").and_then(Value::as_str).unwrap_or("");
        let mut look = built_in(kind);
        let default = self.designs.get(DEFAULT_KIND);
        if let Some(d) = default {
            look.cover(&d.look);
        }
        let own = self.designs.get(kind).filter(|_| kind != DEFAULT_KIND);
        if let Some(d) = own {
            look.cover(&d.look);
        }
        let (design, from) = match (own, default) {
            (Some(d), _) => (Some(d), kind),
            (None, Some(d)) => (Some(d), DEFAULT_KIND),
            (None, None) => (None, "built_in"),
        };
        let mut variation = None;
        if let Some(d) = design {
            if let Some(i) = choose(&d.variations, alert) {
                let v = &d.variations[i];
                look.cover(&v.set);
                variation = Some(match &v.name {
                    Some(name) => name.0.to_string(),
                    None => format!("#{}", i + 1),
                });
            }
        }
        Resolved {
            design: from.to_owned(),
            variation,
            locale: self.locale.clone(),
            look,
        }
    }
}

/// The first variation that matches the alert, if any. The random ones share one draw: the
/// alert's ticket, from a hash of its id, falls in exactly one of their weights.
fn choose(variations: &[Variation], alert: &Value) -> Option<usize> {
    let total: u64 = variations
        .iter()
        .filter_map(|v| match &v.when {
            Condition::Random(w) => Some(u64::from(w.weight.0)),
            _ => None,
        })
        .sum();
    let id = alert.get("id").and_then(Value::as_str).unwrap_or("");
    let ticket = if total > 0 { fnv1a(id) % total } else { 0 };
    let mut passed = 0u64;
    variations.iter().position(|v| match &v.when {
        Condition::MinAmount(min) => {
            let amount = alert.get("amount");
            let currency = amount
                .and_then(|a| a.get("currency"))
                .and_then(Value::as_str);
            let value = amount
                .and_then(|a| a.get("value"))
                .and_then(Value::as_str)
                .and_then(Decimal::parse);
            currency == Some(&*min.currency.0)
                && value.is_some_and(|v| Some(v) >= Decimal::parse(&min.value.0))
        }
        Condition::Data(m) => match alert.get("data").and_then(|d| d.get(&*m.field.0)) {
            None => false,
            Some(found) => {
                found == &m.equals
                    || match (found, &m.equals) {
                        (Value::String(s), other) | (other, Value::String(s)) => {
                            !other.is_string() && other.to_string().as_str() == s.as_str()
                        }
                        _ => false,
                    }
            }
        },
        Condition::Random(w) => {
            let from = passed;
            passed += u64::from(w.weight.0);
            (from..passed).contains(&ticket)
        }
    })
}

/// FNV-1a, 64 bits: the same on every node and every build, unlike std's hasher.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An alert's look, resolved: sent with the alert as its `design`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resolved {
    /// The design it came from: its kind, `default`, or `built_in`.
    pub design: String,
    /// The variation that matched: its name, or `#n` for the nth unnamed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
    #[serde(flatten)]
    pub look: Look,
}

/// The built-in design of `kind`: every field set, so a fresh install looks good.
pub fn built_in(kind: &str) -> Look {
    let title = match kind {
        "donation" => "{from} donated {amount}",
        "subscription" => "{from} subscribed",
        "follow" => "{from} followed",
        "raid" => "{from} is raiding",
        "test" => "Test alert from {from}",
        _ => "{from} {amount}",
    };
    let text = |s: &str| Some(Template(s.into()));
    Look {
        layout: Some(Layout::ImageAbove),
        title: text(title),
        body: text("{message}"),
        font_family: Some(FontFamily(
            "system-ui, \"Segoe UI\", Roboto, \"Noto Sans\", \"Helvetica Neue\", Arial, sans-serif"
                .into(),
        )),
        font_size: Some(FontSize(64)),
        font_weight: Some(FontWeight(800)),
        text_color: Some(Color("#ffffff".into())),
        highlight_color: Some(Color("#ffd35c".into())),
        text_shadow: Some(Shadow::Strong),
        animation_in: Some(Animation {
            name: Motion::Pop,
            duration_ms: AnimationMs(450),
        }),
        animation_out: Some(Animation {
            name: Motion::Fade,
            duration_ms: AnimationMs(300),
        }),
        image: Some(MediaUrl("".into())),
        sound: Some(MediaUrl(BUILT_IN_SOUND.into())),
        volume: Some(Volume(0.6)),
        duration_ms: Some(DurationMs(8_000)),
        css: Some(Css("".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(v: Value) -> Result<Put, FieldError> {
        Put::parse(v.to_string().as_bytes())
    }

    fn field_of(v: Value) -> String {
        match put(v) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.field.unwrap_or_default(),
        }
    }

    #[test]
    fn a_wrong_field_is_named_with_its_path() {
        assert_eq!(
            field_of(json!({"designs": {"donation": {"colour": "#fff"}}})),
            "designs.donation.colour"
        );
        assert_eq!(
            field_of(json!({"designs": {"donation": {"text_color": "red"}}})),
            "designs.donation.text_color"
        );
        assert_eq!(
            field_of(json!({"designs": {"default": {"animation_in": {"name": "spin"}}}})),
            "designs.default.animation_in.name"
        );
        assert_eq!(
            field_of(json!({"designs": {"raid": {"css": "a{}".repeat(6000)}}})),
            "designs.raid.css"
        );
        assert_eq!(
            field_of(
                json!({"designs": {"raid": {"variations": [{"when": {"random": {"weight": 1}}, "set": {"layout": "sideways"}}]}}})
            ),
            "designs.raid.variations[0].set.layout"
        );
        assert_eq!(
            field_of(json!({"designs": {"Bad Kind": {}}})),
            "designs.Bad Kind"
        );
        assert_eq!(field_of(json!({"designz": {}})), "designz");
        assert_eq!(
            field_of(json!({"designs": {"follow": {"title": "hi {name}"}}})),
            "designs.follow.title"
        );
        assert_eq!(
            field_of(json!({"designs": {"follow": {"image": "javascript:alert(1)"}}})),
            "designs.follow.image"
        );
    }

    #[test]
    fn what_is_put_reads_back_the_same() {
        let p = put(json!({"locale": "pt-BR", "designs": {
            "donation": {"layout": "image_left", "title": "{from} {{{amount}}}", "volume": 0.5,
                "variations": [{"name": "big", "when": {"min_amount": {"value": "100", "currency": "BRL"}}, "set": {"text_color": "#ff0000"}}]},
            "default": {"font_size": 48}
        }}))
        .unwrap();
        let again = Designs::parse_stored(&p.designs.to_json()).unwrap();
        assert_eq!(again, p.designs);
    }

    #[test]
    fn the_first_matching_variation_wins_and_random_ones_share_a_draw() {
        let d = put(json!({"designs": {"donation": {"variations": [
            {"name": "big", "when": {"min_amount": {"value": "100", "currency": "BRL"}}, "set": {"layout": "text_only"}},
            {"name": "tier3", "when": {"data": {"field": "tier", "equals": "3"}}},
            {"name": "a", "when": {"random": {"weight": 1}}},
            {"name": "b", "when": {"random": {"weight": 3}}}
        ]}}}))
        .unwrap()
        .designs;
        let alert = |id: &str, value: &str, tier: Value| json!({"id": id, "kind": "donation", "amount": {"value": value, "currency": "BRL"}, "data": {"tier": tier}});
        let r = d.resolve(&alert("x", "100.00", json!(3)));
        assert_eq!(
            (r.variation.as_deref(), r.look.layout),
            (Some("big"), Some(Layout::TextOnly))
        );
        assert_eq!(
            d.resolve(&alert("x", "99.99", json!(3)))
                .variation
                .as_deref(),
            Some("tier3")
        );
        let mut drawn = BTreeMap::new();
        for i in 0..4000 {
            let v = d
                .resolve(&alert(&format!("id-{i}"), "1", json!(1)))
                .variation
                .unwrap();
            *drawn.entry(v).or_insert(0) += 1;
            // The same alert always draws the same.
            assert_eq!(
                d.resolve(&alert(&format!("id-{i}"), "1", json!(1)))
                    .variation,
                d.resolve(&alert(&format!("id-{i}"), "1", json!(1)))
                    .variation
            );
        }
        assert!((800..1200).contains(&drawn["a"]), "{drawn:?}");
        assert!((2800..3200).contains(&drawn["b"]), "{drawn:?}");
    }

    #[test]
    fn a_kind_without_a_design_takes_the_default_then_the_built_in() {
        let d = put(
            json!({"designs": {"default": {"text_color": "#00ff00"}, "raid": {"font_size": 90}}}),
        )
        .unwrap()
        .designs;
        let follow = d.resolve(&json!({"id": "1", "kind": "follow"}));
        assert_eq!(follow.design, "default");
        assert_eq!(follow.look.text_color, Some(Color("#00ff00".into())));
        assert_eq!(follow.look.title, Some(Template("{from} followed".into())));
        let raid = d.resolve(&json!({"id": "1", "kind": "raid"}));
        assert_eq!(
            (raid.design.as_str(), raid.look.font_size),
            ("raid", Some(FontSize(90)))
        );
        assert_eq!(raid.look.text_color, Some(Color("#00ff00".into())));
        assert_eq!(
            Designs::default().resolve(&json!({"kind": "x"})).design,
            "built_in"
        );
    }
}
