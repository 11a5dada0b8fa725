//! Async invocations: `/async-function/NAME[/path]` stores the call in the queue
//! ([`accept`]), one dispatcher per deployed function runs its calls through the same path as
//! sync calls ([`dispatcher`], [`worker`]), and the result goes to the caller's
//! `X-Callback-Url` ([`callback`]).
//!
//! # Guarantees
//!
//! - A 202 means the call is on disk ([`skyfri_queue::Queue::enqueue`] has returned). A
//!   caller's `X-Call-Id` makes the POST idempotent: the same id again is answered 202 with
//!   that id, and nothing is added.
//! - Each call runs at least once. A worker holds a lease on its call and renews it every
//!   third of its length while the function runs; if the gateway dies, the lease lapses and
//!   the call runs again (as its next attempt).
//! - Retries follow the function's [`skyfri_core::RetryPolicy`]; out of attempts, the call
//!   is dead (a dead letter) until it is re-driven.
//! - Callbacks are best effort: once the call is durably done or dead, its callback is
//!   posted, and retried a few times in memory ([`callback`]); a callback still pending when
//!   the gateway stops is not sent.

pub mod accept;
pub mod callback;
pub mod dispatcher;
pub mod worker;

use axum::http::StatusCode;
use skyfri_queue::QueueError;

use crate::error::GatewayError;

/// The header that tells a function which run of an async call it is serving (1 for the
/// first), also sent with the callback.
pub const ATTEMPT_HEADER: &str = "x-skyfri-attempt";

/// The longest `X-Call-Id` a caller may choose.
pub const MAX_CALL_ID: usize = 128;

/// Checks a caller's `X-Call-Id`: 1 to [`MAX_CALL_ID`] printable ASCII characters, no
/// spaces (it appears in paths such as `/system/async/calls/CALL-ID`).
pub fn validate_call_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CALL_ID {
        return Err(format!(
            "X-Call-Id must be 1 to {MAX_CALL_ID} characters long, not {}",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "X-Call-Id {id:?} has the character {c:?}: use printable ASCII without spaces"
        ));
    }
    Ok(())
}

/// A queue error as the API answers it.
pub(crate) fn queue_error(e: QueueError) -> GatewayError {
    match e {
        QueueError::NotFound(id) => GatewayError::not_found(format!("no async call {id:?}")),
        QueueError::UnknownState(_) => GatewayError::bad_request(e.to_string()),
        QueueError::Closed => GatewayError::Platform {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the async queue is shutting down; retry against the restarted gateway"
                .to_string(),
        },
        QueueError::LeaseLost(_) => GatewayError::Platform {
            status: StatusCode::CONFLICT,
            message: e.to_string(),
        },
        QueueError::TooLarge(_) => GatewayError::Platform {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: e.to_string(),
        },
        QueueError::Backend(_) => GatewayError::Platform {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
