//! The widget token a page or a socket of one receiver is opened with: `?token=T`.

use serde::Deserialize;

use super::{ApiError, AppState};
use crate::alert::ReceiverId;

/// The query that carries it.
#[derive(Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// The token opens this receiver's widget, or the request is refused with 401.
pub fn check_token(
    state: &AppState,
    receiver: &ReceiverId,
    token: Option<&str>,
) -> Result<(), ApiError> {
    match token {
        Some(t) if state.tokens.verify(receiver, t) => Ok(()),
        _ => Err(ApiError::BadToken),
    }
}
