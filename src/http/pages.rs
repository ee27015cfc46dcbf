//! The widget page, the dock page and their assets, compiled into the binary so one file
//! deploys.

use super::token::{check_token, opens, Opening, TokenQuery};
use super::{ApiError, AppState};
use crate::alert::ReceiverId;
use crate::auth::Purpose;
use crate::speech::Made;
use actix_web::http::header;
use actix_web::{web, HttpResponse, HttpResponseBuilder};

const WIDGET_HTML: &str = include_str!("../../widget/index.html");
const WIDGET_JS: &str = include_str!("../../widget/widget.js");
const WIDGET_CSS: &str = include_str!("../../widget/widget.css");
const DOCK_HTML: &str = include_str!("../../widget/dock.html");
const DOCK_JS: &str = include_str!("../../widget/dock.js");
const DOCK_CSS: &str = include_str!("../../widget/dock.css");
const STATUS_JS: &str = include_str!("../../widget/status.js");
const STATUS_CSS: &str = include_str!("../../widget/status.css");
const TOASTS_JS: &str = include_str!("../../widget/toasts.js");
const TOASTS_CSS: &str = include_str!("../../widget/toasts.css");

/// Scripts only from cuebox itself, so even if donor text ever reached the DOM as HTML, no
/// inline handler in it could run.
pub(super) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src http: https: data:; media-src 'self' http: https:; \
                   connect-src 'self' ws: wss:";

/// `GET /widget/{receiver}?token=T`: the page to add to OBS as a browser source.
///
/// Whatever this answers is on stream, so a refusal is the same transparent page with 401 and
/// nothing visible on it: the page sees it is refused (`data-refused` on its body), says why in
/// the browser's console, and tries again every 30 seconds.
pub async fn widget_page(
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let refused = match ReceiverId::parse(&path) {
        Err(_) => Some("receiver"),
        Ok(receiver) => {
            let preview = query.preview.as_deref() == Some("1");
            let token = query.token.as_deref();
            match check_token(&state, &receiver, token, Opening::Page, preview).await {
                Err(ApiError::BadToken) => Some("token"),
                // The store could not say which generation is current: the page is served, and
                // its socket, which checks the token again, retries until it can.
                Ok(()) | Err(_) => None,
            }
        }
    };
    let (response, body) = match refused {
        None => (HttpResponse::Ok(), WIDGET_HTML.into()),
        Some(why) => {
            let status = match why {
                "token" => actix_web::http::StatusCode::UNAUTHORIZED,
                _ => actix_web::http::StatusCode::BAD_REQUEST,
            };
            let marked = WIDGET_HTML.replacen(
                "<body data-connected=\"false\">",
                &format!("<body data-connected=\"false\" data-refused=\"{why}\">"),
                1,
            );
            (HttpResponse::build(status), marked)
        }
    };
    page(response, body)
}

/// A page of cuebox's own, under its CSP, never cached (a token may stop opening it).
fn page(mut response: HttpResponseBuilder, body: String) -> HttpResponse {
    response
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(body)
}

/// `GET /dock/{receiver}?token=T`: the streamer's controls, for an OBS custom browser dock. `T`
/// is the receiver's dashboard token; a refused one gets 401 and the page saying so.
pub async fn dock_page(
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let opened = match ReceiverId::parse(&path) {
        Err(_) => Ok(false),
        Ok(receiver) => {
            opens(
                &state,
                Purpose::Dashboard,
                &receiver,
                [query.token.as_deref()],
            )
            .await
        }
    };
    let (response, body) = match opened {
        Ok(true) => (HttpResponse::Ok(), DOCK_HTML.to_owned()),
        Ok(false) => (
            HttpResponse::Unauthorized(),
            DOCK_HTML.replacen("<body ", "<body data-refused=\"token\" ", 1),
        ),
        // The page itself reads the receiver, and says what the store answers.
        Err(_) => (HttpResponse::ServiceUnavailable(), DOCK_HTML.to_owned()),
    };
    page(response, body)
}

pub async fn widget_asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if path.as_str() == "chime.wav" {
        return Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "audio/wav"))
            .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
            .body(chime()));
    }
    let (body, kind) = match path.as_str() {
        "widget.js" => (WIDGET_JS, "text/javascript; charset=utf-8"),
        "widget.css" => (WIDGET_CSS, "text/css; charset=utf-8"),
        "dock.js" => (DOCK_JS, "text/javascript; charset=utf-8"),
        "dock.css" => (DOCK_CSS, "text/css; charset=utf-8"),
        "status.js" => (STATUS_JS, "text/javascript; charset=utf-8"),
        "status.css" => (STATUS_CSS, "text/css; charset=utf-8"),
        "toasts.js" => (TOASTS_JS, "text/javascript; charset=utf-8"),
        "toasts.css" => (TOASTS_CSS, "text/css; charset=utf-8"),
        _ => return Err(ApiError::NotFound),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, kind))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body))
}

/// `GET /speech/{key}`: an alert's speech, made on this node when it sent the alert (the key,
/// a hash of the words and the voice, is in the alert's frame). Waits while it is being made; a
/// failed or slow engine is 503, and the widget shows the alert without speech.
pub async fn speech(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    match state.speech.audio(&path).await {
        None => Err(ApiError::NotFound),
        Some(Made::Audio(audio)) => Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "audio/wav"))
            .insert_header((header::CACHE_CONTROL, "private, max-age=3600"))
            .body(audio)),
        Some(Made::Failed(why)) => Err(ApiError::NoSpeech(why)),
        Some(Made::Making) => Err(ApiError::NoSpeech("still being made".into())),
    }
}

/// The built-in alert sound (`crate::design::BUILT_IN_SOUND`): a short two-note chime, made
/// once, so the binary ships a sound without a file to fetch from anywhere.
fn chime() -> &'static [u8] {
    static WAV: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    WAV.get_or_init(|| {
        const RATE: u32 = 22_050;
        let notes = [(0.0, 987.77), (0.12, 1318.51)]; // B5, then E6
        let length = (RATE as f64 * 0.9) as usize;
        let samples: Vec<i16> = (0..length)
            .map(|i| {
                let t = i as f64 / RATE as f64;
                let v: f64 = notes
                    .iter()
                    .filter(|(at, _)| t >= *at)
                    .map(|(at, hz)| {
                        let since = t - at;
                        let attack = (since / 0.005).min(1.0);
                        attack * (-since * 5.0).exp() * (std::f64::consts::TAU * hz * since).sin()
                    })
                    .sum();
                (v * 0.35 * i16::MAX as f64) as i16
            })
            .collect();
        let data = (samples.len() * 2) as u32;
        let mut wav = Vec::with_capacity(44 + data as usize);
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&(36 + data).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
        wav.extend_from_slice(&1u16.to_le_bytes()); // mono
        wav.extend_from_slice(&RATE.to_le_bytes());
        wav.extend_from_slice(&(RATE * 2).to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&data.to_le_bytes());
        for s in samples {
            wav.extend_from_slice(&s.to_le_bytes());
        }
        wav
    })
}
