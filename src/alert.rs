//! Alerts as platforms send them and as widgets receive them: parsed and checked once, at the
//! edge, then trusted everywhere inside.
//!
//! [`NewAlert::parse`] turns a `POST /publish` body into a [`NewAlert`] or a [`FieldError`] that
//! names the field at fault. [`NewAlert::into_record`] gives the alert its id and creation time
//! and serializes it once into the JSON every widget receives, byte for byte.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::design::Designs;

/// The streamer an alert is for: 1 to 64 of `[A-Za-z0-9_-]`.
///
/// The character set matters beyond looks: the id is placed inside a Redis hash tag (`{id}`), so
/// it must never contain braces, and it appears in URLs unescaped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ReceiverId(Arc<str>);

impl ReceiverId {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(FieldError::invalid(
                "receiver",
                "receiver must be 1 to 64 of A-Z, a-z, 0-9, '_' and '-'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReceiverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a publish body was refused, and which field to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl FieldError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            code: "invalid_field",
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    pub fn body(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }
}

/// `{"value": "10.50", "currency": "BRL"}`. The value stays a string so that no amount is ever
/// rounded through a float on its way to the screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Amount {
    pub value: String,
    pub currency: String,
}

/// A non-negative decimal as an integer count of 10^-9 units, compared exactly (never through a
/// float).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decimal(u128);

impl Decimal {
    pub fn parse(s: &str) -> Option<Self> {
        let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || whole.len() > 20 || fraction.len() > 9 || !digits(whole) {
            return None;
        }
        if !digits(fraction) || (s.contains('.') && fraction.is_empty()) {
            return None;
        }
        let whole: u128 = whole.parse().ok()?;
        let scaled: u128 = format!("{fraction:0<9}").parse().ok()?;
        Some(Self(whole * 1_000_000_000 + scaled))
    }
}

/// Media the widget loads: only http(s) URLs, so nothing like `javascript:` reaches a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Media {
    pub image: Option<String>,
    pub sound: Option<String>,
}

pub const DEFAULT_DURATION_MS: u32 = 8000;
pub const MAX_DATA_BYTES: usize = 4096;
const FIELDS: &[&str] = &[
    "receiver",
    "kind",
    "from",
    "amount",
    "message",
    "media",
    "duration_ms",
    "data",
    "idempotency_key",
    "priority",
];

/// How an alert queues: `"high"` goes ahead of every normal waiting alert, still one at a time
/// and FIFO among the high ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Normal,
    High,
}

/// A valid alert as published, before it has an id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub receiver: ReceiverId,
    pub kind: String,
    pub from: Option<String>,
    pub amount: Option<Amount>,
    pub message: Option<String>,
    pub media: Option<Media>,
    pub duration_ms: u32,
    /// Whether the publisher gave `duration_ms`; if not, the receiver's design for the alert
    /// may set it (see [`NewAlert::into_record_with`]).
    pub duration_given: bool,
    pub data: Option<Map<String, Value>>,
    pub idempotency_key: Option<String>,
    pub priority: Priority,
}

/// An accepted alert: its id, its receiver, and the JSON that widgets get, serialized once.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    pub id: String,
    pub receiver: ReceiverId,
    pub duration_ms: u32,
    pub priority: Priority,
    pub json: Arc<str>,
}

/// The wire shape of an alert. `duration_ms` is written before `data`, which is the only part a
/// publisher controls the keys of; nothing in the store depends on that, but it keeps the JSON
/// easy to read for a human scanning a queue.
#[derive(Serialize)]
struct AlertJson<'a> {
    id: &'a str,
    receiver: &'a ReceiverId,
    kind: &'a str,
    from: &'a Option<String>,
    amount: &'a Option<Amount>,
    message: &'a Option<String>,
    media: &'a Option<Media>,
    duration_ms: u32,
    priority: Priority,
    data: &'a Option<Map<String, Value>>,
    created_at: String,
}

impl NewAlert {
    /// Parses a publish body. `header_key` is the `Idempotency-Key` header, if any.
    pub fn parse(body: &[u8], header_key: Option<&str>) -> Result<Self, FieldError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            FieldError::body("invalid_json", format!("body is not valid JSON: {e}"))
        })?;
        let Value::Object(mut obj) = value else {
            return Err(FieldError::body(
                "invalid_json",
                "body must be a JSON object",
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(FieldError {
                code: "unknown_field",
                message: format!("unknown field `{unknown}`"),
                field: Some(unknown.clone()),
            });
        }

        let receiver = match obj.remove("receiver") {
            Some(Value::String(s)) => ReceiverId::parse(&s)?,
            None | Some(Value::Null) => {
                return Err(FieldError {
                    code: "missing_field",
                    message: "receiver is required".into(),
                    field: Some("receiver".into()),
                })
            }
            Some(_) => return Err(FieldError::invalid("receiver", "receiver must be a string")),
        };
        let kind = match opt_string(&mut obj, "kind")? {
            None => "donation".to_owned(),
            Some(k) => {
                let ok = (1..=32).contains(&k.len())
                    && k.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    });
                if !ok {
                    return Err(FieldError::invalid(
                        "kind",
                        "kind must be 1 to 32 of a-z, 0-9, '_' and '-'",
                    ));
                }
                k
            }
        };
        let from = opt_string(&mut obj, "from")?;
        if let Some(f) = &from {
            if f.chars().count() > 64 {
                return Err(FieldError::invalid(
                    "from",
                    "from must be at most 64 characters",
                ));
            }
        }
        let message = opt_string(&mut obj, "message")?;
        if let Some(m) = &message {
            if m.chars().count() > 500 {
                return Err(FieldError::invalid(
                    "message",
                    "message must be at most 500 characters",
                ));
            }
        }
        let amount = match obj.remove("amount") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_amount(v)?),
        };
        let media = match obj.remove("media") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_media(v)?),
        };
        let duration_given = !matches!(obj.get("duration_ms"), None | Some(Value::Null));
        let duration_ms = match obj.remove("duration_ms") {
            None | Some(Value::Null) => DEFAULT_DURATION_MS,
            Some(v) => match v.as_u64() {
                Some(n @ 1000..=60000) => n as u32,
                _ => {
                    return Err(FieldError::invalid(
                        "duration_ms",
                        "duration_ms must be an integer from 1000 to 60000",
                    ))
                }
            },
        };
        let data = match obj.remove("data") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                // unwrap: a serde_json map always serializes.
                let size = serde_json::to_vec(&map)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX);
                if size > MAX_DATA_BYTES {
                    return Err(FieldError::invalid(
                        "data",
                        format!("data must be at most {MAX_DATA_BYTES} bytes of JSON"),
                    ));
                }
                Some(map)
            }
            Some(_) => return Err(FieldError::invalid("data", "data must be a JSON object")),
        };
        let priority = match opt_string(&mut obj, "priority")?.as_deref() {
            None | Some("normal") => Priority::Normal,
            Some("high") => Priority::High,
            Some(_) => {
                return Err(FieldError::invalid(
                    "priority",
                    "priority must be \"normal\" or \"high\"",
                ))
            }
        };
        let body_key = opt_string(&mut obj, "idempotency_key")?;
        let idempotency_key = match (body_key, header_key) {
            (Some(b), Some(h)) if b != h => {
                return Err(FieldError::invalid(
                    "idempotency_key",
                    "idempotency_key and the Idempotency-Key header differ",
                ))
            }
            (Some(k), _) => Some(k),
            (None, Some(h)) => Some(h.to_owned()),
            (None, None) => None,
        };
        if let Some(k) = &idempotency_key {
            if k.is_empty() || k.chars().count() > 128 {
                return Err(FieldError::invalid(
                    "idempotency_key",
                    "idempotency_key must be 1 to 128 characters",
                ));
            }
        }

        Ok(Self {
            receiver,
            kind,
            from,
            amount,
            message,
            media,
            duration_ms,
            duration_given,
            data,
            idempotency_key,
            priority,
        })
    }

    /// The alert the streamer's test button queues: kind `test`, so a widget (or a design)
    /// can tell it from a real donation.
    pub fn test(receiver: ReceiverId) -> Self {
        Self {
            receiver,
            kind: "test".into(),
            from: Some("cuebox".into()),
            amount: None,
            message: Some("This is a test alert.".into()),
            media: None,
            duration_ms: DEFAULT_DURATION_MS,
            duration_given: false,
            data: None,
            idempotency_key: None,
            priority: Priority::Normal,
        }
    }

    /// Gives the alert a fresh id and creation time and serializes it for widgets.
    pub fn into_record(self) -> AlertRecord {
        self.into_record_with(&Designs::default())
    }

    /// As [`NewAlert::into_record`], with the duration the receiver's `designs` give an alert
    /// that carries none (the look it will be shown with, resolved as the widget's will be).
    pub fn into_record_with(mut self, designs: &Designs) -> AlertRecord {
        let id = new_id(&self.receiver);
        if !self.duration_given && !designs.designs.is_empty() {
            let alert = serde_json::json!({
                "id": id, "kind": self.kind, "amount": self.amount, "data": self.data
            });
            if let Some(ms) = designs.resolve(&alert).look.duration_ms {
                self.duration_ms = ms.0;
            }
        }
        let created_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let json = serde_json::to_string(&AlertJson {
            id: &id,
            receiver: &self.receiver,
            kind: &self.kind,
            from: &self.from,
            amount: &self.amount,
            message: &self.message,
            media: &self.media,
            duration_ms: self.duration_ms,
            priority: self.priority,
            data: &self.data,
            created_at,
        })
        // unwrap: every field is a plain string, number or a serde_json map.
        .expect("an alert always serializes");
        AlertRecord {
            id,
            receiver: self.receiver,
            duration_ms: self.duration_ms,
            priority: self.priority,
            json: json.into(),
        }
    }
}

/// A fresh alert id for `receiver`: a UUID (version 8, RFC 9562) whose first 32 bits are the
/// receiver's [`route`] and the rest random (90 bits, from a v4 UUID). So `GET /alerts/{id}`
/// finds an alert's receiver from its id alone, among the few receivers of that route, with
/// nothing written per alert.
pub fn new_id(receiver: &ReceiverId) -> String {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..4].copy_from_slice(&route(receiver).to_be_bytes());
    uuid::Uuid::new_v8(bytes).to_string()
}

/// The route of a receiver's alert ids: 32 bits of FNV-1a of its name. Receivers may share
/// one; a store keeps which receivers each route has.
pub fn route(receiver: &ReceiverId) -> u32 {
    receiver.as_str().bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The route an alert id carries: `None` for an id that is no UUID of version 8 (made before
/// ids carried routes).
pub fn route_of(id: &str) -> Option<u32> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    (uuid.get_version_num() == 8).then(|| {
        let b = uuid.as_bytes();
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    })
}

/// The `kind` of an alert's JSON as stored. Read at every send (a design is chosen by kind), so
/// the JSON is not parsed whole when it has [`AlertJson`]'s shape: an id and a receiver (neither
/// has a quote or a backslash) and then the kind. Any other shape (a replay's keys are sorted) is
/// parsed whole. `""` if there is none.
pub fn kind_of(json: &str) -> std::borrow::Cow<'_, str> {
    use serde::Deserialize;
    /// Past a field's value, if it has no quote or backslash in it.
    fn past(rest: &str) -> Option<&str> {
        let end = rest.find('"')?;
        (!rest[..end].contains('\\')).then(|| &rest[end..])
    }
    let after_prefix = || {
        let rest = past(json.strip_prefix(r#"{"id":""#)?)?;
        let rest = past(rest.strip_prefix(r#"","receiver":""#)?)?;
        rest.strip_prefix(r#"","kind":"#)
    };
    if let Some(at) = after_prefix() {
        // A kind with an escape in it cannot be borrowed, and is read by the whole parse.
        if let Ok(kind) = <&str>::deserialize(&mut serde_json::Deserializer::from_str(at)) {
            return std::borrow::Cow::Borrowed(kind);
        }
    }
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow, default)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Kind>(json)
        .map(|k| k.kind)
        .unwrap_or_default()
}

impl AlertRecord {
    /// An alert of `receiver`'s history (its JSON as widgets got it) queued again: the same
    /// alert with a fresh id and creation time, and `replay_of` naming the one it repeats.
    /// `None` if the JSON is not an alert's.
    pub fn replay_of(receiver: &ReceiverId, json: &str) -> Option<AlertRecord> {
        let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(json) else {
            return None;
        };
        let old = obj.get("id")?.as_str()?.to_owned();
        let duration_ms = obj.get("duration_ms")?.as_u64()?.try_into().ok()?;
        let id = new_id(receiver);
        let created_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        obj.insert("id".into(), Value::String(id.clone()));
        obj.insert("created_at".into(), Value::String(created_at));
        obj.insert("replay_of".into(), Value::String(old));
        Some(AlertRecord {
            id,
            receiver: receiver.clone(),
            duration_ms,
            priority: Priority::High,
            json: Value::Object(obj).to_string().into(),
        })
    }
}

fn opt_string(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FieldError::invalid(
            field,
            format!("{field} must be a string"),
        )),
    }
}

fn parse_amount(v: Value) -> Result<Amount, FieldError> {
    let Value::Object(mut obj) = v else {
        return Err(FieldError::invalid(
            "amount",
            "amount must be an object {\"value\": \"10.50\", \"currency\": \"BRL\"}",
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "value" && *k != "currency") {
        return Err(FieldError::invalid(
            &format!("amount.{k}"),
            format!("unknown field `{k}` in amount"),
        ));
    }
    let value = match obj.remove("value") {
        Some(Value::String(s)) if is_decimal(&s) => s,
        _ => {
            return Err(FieldError::invalid(
                "amount.value",
                "amount.value must be a non-negative decimal string such as \"10.50\"",
            ))
        }
    };
    let currency = match obj.remove("currency") {
        Some(Value::String(s)) if is_currency(&s) => s,
        _ => {
            return Err(FieldError::invalid(
                "amount.currency",
                "amount.currency must be an ISO 4217 code such as \"BRL\"",
            ))
        }
    };
    Ok(Amount { value, currency })
}

/// `123`, `10.50`: digits, at most one point with digits on both sides. Length is bounded so a
/// value always fits what a widget can format.
fn is_decimal(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    digits(int, 18) && frac.is_none_or(|f| digits(f, 8))
}

fn is_currency(s: &str) -> bool {
    s.len() == 3 && ISO_4217.binary_search(&s).is_ok()
}

fn parse_media(v: Value) -> Result<Media, FieldError> {
    let Value::Object(mut obj) = v else {
        return Err(FieldError::invalid(
            "media",
            "media must be an object {\"image\": URL, \"sound\": URL}",
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "image" && *k != "sound") {
        return Err(FieldError::invalid(
            &format!("media.{k}"),
            format!("unknown field `{k}` in media"),
        ));
    }
    let mut url = |name: &str| -> Result<Option<String>, FieldError> {
        let field = format!("media.{name}");
        match obj.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if is_http_url(&s) => Ok(Some(s)),
            Some(_) => Err(FieldError::invalid(
                &field,
                format!("{field} must be an http or https URL with a host (and no user info), of at most 2048 characters"),
            )),
        }
    };
    Ok(Media {
        image: url("image")?,
        sound: url("sound")?,
    })
}

/// An absolute http(s) URL with a host and no whitespace or control characters. Widgets assign
/// it to `src`, so the scheme check is what keeps script URLs out.
fn is_http_url(s: &str) -> bool {
    let rest = if let Some(r) = s.strip_prefix("https://") {
        r
    } else if let Some(r) = s.strip_prefix("http://") {
        r
    } else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    s.len() <= 2048
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && is_host_and_port(authority)
}

/// `host` or `host:port`: a name, an IPv4 address or a bracketed IPv6 address. User info is
/// refused: `http://@/x` has no host at all, and `https://bank.example@evil.example/` reads as a
/// host it is not.
fn is_host_and_port(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, port)) => (
                v6.contains(':')
                    && v6
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.'),
                port,
            ),
            None => return false,
        },
        None => {
            let (host, port) = match authority.find(':') {
                Some(at) => authority.split_at(at),
                None => (authority, ""),
            };
            let label = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_alphanumeric() || c == '-')
            };
            // A trailing dot is the fully qualified form of the same name.
            let name = host.strip_suffix('.').unwrap_or(host);
            (name.len() <= 253 && name.split('.').all(label), port)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    host_ok && port_ok
}

/// Active ISO 4217 currency codes, sorted for binary search.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD",
    "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP",
    "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
    "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW",
    "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD",
    "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN",
    "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
    "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL",
    "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES",
    "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR",
    "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NewAlert, FieldError> {
        NewAlert::parse(json.as_bytes(), None)
    }

    #[test]
    fn the_currency_list_is_sorted_so_binary_search_works() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_minimal_alert_gets_the_defaults() {
        let a = parse(r#"{"receiver":"alice"}"#).unwrap();
        assert_eq!(a.kind, "donation");
        assert_eq!(a.duration_ms, 8000);
    }

    #[test]
    fn the_kind_is_read_from_any_alert_json() {
        let record = parse(r#"{"receiver":"a-1","kind":"sub","message":"\"kind\":\"x\""}"#)
            .unwrap()
            .into_record();
        assert!(matches!(
            kind_of(&record.json),
            std::borrow::Cow::Borrowed("sub")
        ));
        let replayed = AlertRecord::replay_of(&record.receiver, &record.json).unwrap();
        assert_eq!(kind_of(&replayed.json), "sub");
        for (json, kind) in [
            (r#"{"id":"1","receiver":"a","kind":"a\u0062c"}"#, "abc"),
            (r#"{"id":"1","receiver":"a","kind":7}"#, ""),
            (r#"{"id":"1\"","receiver":"a","kind":"b"}"#, "b"),
            (r#"{"data":{"kind":"no"},"kind":"yes"}"#, "yes"),
            (r#"{"id":"1","receiver":"a"}"#, ""),
            ("not json", ""),
        ] {
            assert_eq!(kind_of(json), kind, "{json}");
        }
    }

    #[test]
    fn media_urls_name_a_host() {
        for good in [
            "https://example.com/a.gif",
            "http://127.0.0.1:8080/a.png",
            "http://[::1]:8080/a.png",
            "https://cdn.example.com./a.mp3",
            "https://例え.jp/a.png",
            "https://example.com?x=1",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "http://@/x",
            "http://user:pass@example.com/",
            "http://example.com:/a",
            "http://example.com:123456/a",
            "http://[zz]/a",
            "http://-a.example/",
            "https:///a",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{}"#, "receiver"),
            (r#"{"receiver":"a b"}"#, "receiver"),
            (r#"{"receiver":"a","kind":"Big"}"#, "kind"),
            (r#"{"receiver":"a","nope":1}"#, "nope"),
            (r#"{"receiver":"a","duration_ms":999}"#, "duration_ms"),
            (r#"{"receiver":"a","duration_ms":1.5}"#, "duration_ms"),
            (
                r#"{"receiver":"a","amount":{"value":"-1","currency":"BRL"}}"#,
                "amount.value",
            ),
            (
                r#"{"receiver":"a","amount":{"value":"1.","currency":"BRL"}}"#,
                "amount.value",
            ),
            (
                r#"{"receiver":"a","amount":{"value":"1","currency":"XXX"}}"#,
                "amount.currency",
            ),
            (
                r#"{"receiver":"a","media":{"image":"javascript:alert(1)"}}"#,
                "media.image",
            ),
            (
                r#"{"receiver":"a","media":{"image":"http://@/x"}}"#,
                "media.image",
            ),
            (
                r#"{"receiver":"a","media":{"image":"https://bank.example@evil.example/a.png"}}"#,
                "media.image",
            ),
            (
                r#"{"receiver":"a","media":{"image":"http://:80/a.png"}}"#,
                "media.image",
            ),
            (
                r#"{"receiver":"a","media":{"image":"http://a..b/a.png"}}"#,
                "media.image",
            ),
            (
                r#"{"receiver":"a","media":{"sound":"http://"}}"#,
                "media.sound",
            ),
            (r#"{"receiver":"a","data":[1]}"#, "data"),
            (
                r#"{"receiver":"a","idempotency_key":""}"#,
                "idempotency_key",
            ),
        ];
        for (body, field) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{body}: {err:?}");
        }
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let from = "é".repeat(64);
        assert!(parse(&format!(r#"{{"receiver":"a","from":"{from}"}}"#)).is_ok());
        let from = "é".repeat(65);
        assert!(parse(&format!(r#"{{"receiver":"a","from":"{from}"}}"#)).is_err());
    }

    #[test]
    fn the_record_keeps_text_byte_for_byte() {
        let a = parse(r#"{"receiver":"a","message":"שלום 👋 <b>x</b>"}"#).unwrap();
        let r = a.into_record();
        let v: Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["message"], "שלום 👋 <b>x</b>");
        assert_eq!(v["id"], r.id.as_str());
        assert_eq!(route_of(&r.id), Some(route(&r.receiver)));
    }
}
