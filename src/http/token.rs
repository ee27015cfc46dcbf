//! The widget token a page or a socket of one receiver is opened with: `?token=T`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{ApiError, AppState};
use crate::alert::ReceiverId;
use crate::auth::Purpose;
use crate::store::StoreError;

/// The query that carries it.
#[derive(Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
    /// `1` for a preview widget (see `hub::Seat::preview`).
    pub preview: Option<String>,
    /// `0` for a widget that reconnects off air (it said so before its connection dropped).
    pub active: Option<String>,
}

/// What a refused token was presented for, as the log says it.
#[derive(Clone, Copy, Debug)]
pub enum Opening {
    Page,
    Socket,
}

/// Whether any of `presented` is the receiver's `purpose` token of its current generation, which
/// the store keeps (so a rotation retires a token on every node at once). Nothing presented
/// costs no store read.
pub async fn opens<'a>(
    state: &AppState,
    purpose: Purpose,
    receiver: &ReceiverId,
    presented: impl IntoIterator<Item = Option<&'a str>>,
) -> Result<bool, StoreError> {
    let presented: Vec<&str> = presented.into_iter().flatten().collect();
    if presented.is_empty() {
        return Ok(false);
    }
    let generation = state.hub.store().generations(receiver).await?.of(purpose);
    Ok(presented
        .iter()
        .any(|t| state.tokens.verify_for(purpose, receiver, generation, t)))
}

/// The token opens this receiver's widget, or the request is refused with 401 (and logged, at
/// most once a minute per receiver). A `preview` opens with the dashboard token as well (the
/// dock's preview of the widget: whoever controls the queue may watch it).
pub async fn check_token(
    state: &AppState,
    receiver: &ReceiverId,
    token: Option<&str>,
    opening: Opening,
    preview: bool,
) -> Result<(), ApiError> {
    let opened = opens(state, Purpose::Widget, receiver, [token]).await?
        || (preview && opens(state, Purpose::Dashboard, receiver, [token]).await?);
    if opened {
        Ok(())
    } else {
        state.refusals.note(receiver, opening);
        Err(ApiError::BadToken)
    }
}

/// A widget with a bad token retries forever, so its refusals are logged at most once a
/// minute per receiver: enough for a streamer's operator to see which widget URL is wrong
/// without a line every few seconds.
#[derive(Default)]
pub struct Refusals {
    logged: Mutex<HashMap<ReceiverId, Instant>>,
}

const LOG_EVERY: Duration = Duration::from_secs(60);
/// Receivers remembered at once. Past it, receivers refused within the last minute are not
/// logged again until some are forgotten: a flood of made-up receiver names cannot grow the
/// map.
const REMEMBERED: usize = 10_000;

impl Refusals {
    pub fn note(&self, receiver: &ReceiverId, opening: Opening) {
        let now = Instant::now();
        {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            if logged
                .get(receiver)
                .is_some_and(|at| now.duration_since(*at) < LOG_EVERY)
            {
                return;
            }
            if logged.len() >= REMEMBERED {
                logged.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
                if logged.len() >= REMEMBERED {
                    return;
                }
            }
            logged.insert(receiver.clone(), now);
        }
        tracing::warn!(
            %receiver, ?opening,
            "refused a widget: its token does not open this receiver (a URL made by another \
             cuebox, or with another secret); logged at most once a minute per receiver"
        );
    }
}
