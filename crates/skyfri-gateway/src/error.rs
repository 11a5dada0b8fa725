//! Errors the gateway answers with: each knows whether the caller (4xx), the function
//! (502/504) or the platform (503/500) is at fault, and renders as JSON.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::limits::Limit;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The caller sent something wrong.
    #[error("{message}")]
    Caller { status: StatusCode, message: String },
    /// The function failed: crashed, closed the connection, or timed out.
    #[error("{message}")]
    Function { status: StatusCode, message: String },
    /// skyfri itself could not serve the request.
    #[error("{message}")]
    Platform { status: StatusCode, message: String },
    /// A limit stopped the call: the error, and which limit with its value.
    #[error("{error}")]
    Limited {
        error: Box<GatewayError>,
        limit: Box<Limit>,
    },
}

impl GatewayError {
    pub fn bad_request(message: impl Into<String>) -> GatewayError {
        GatewayError::Caller {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> GatewayError {
        GatewayError::Caller {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn internal(message: impl std::fmt::Display) -> GatewayError {
        GatewayError::Platform {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.to_string(),
        }
    }

    /// This error, saying which limit caused it.
    pub fn with_limit(self, limit: Limit) -> GatewayError {
        GatewayError::Limited {
            error: Box::new(self),
            limit: Box::new(limit),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Caller { status, .. }
            | GatewayError::Function { status, .. }
            | GatewayError::Platform { status, .. } => *status,
            GatewayError::Limited { error, .. } => error.status(),
        }
    }

    /// The function failed (crashed, closed the connection, timed out), not the caller or
    /// the platform.
    pub fn is_function(&self) -> bool {
        self.source_name() == "function"
    }

    fn source_name(&self) -> &'static str {
        match self {
            GatewayError::Caller { .. } => "caller",
            GatewayError::Function { .. } => "function",
            GatewayError::Platform { .. } => "platform",
            GatewayError::Limited { error, .. } => error.source_name(),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": self.to_string(),
            "source": self.source_name(),
            "status": self.status().as_u16(),
        });
        let retry_after = match &self {
            GatewayError::Limited { limit, .. } => {
                body["limit"] = serde_json::to_value(limit).unwrap_or_default();
                limit.retry_after
            }
            _ => None,
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<skyfri_store::StoreError> for GatewayError {
    fn from(e: skyfri_store::StoreError) -> GatewayError {
        GatewayError::internal(e)
    }
}
