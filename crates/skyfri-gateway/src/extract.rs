//! axum's `Query` and `Path` extractors, refusing bad input with the gateway's JSON error
//! (`{"error": ...}`, 400) instead of axum's plain-text rejection.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::GatewayError;

/// The query string, deserialized; a bad one is a 400 naming the field.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, GatewayError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| GatewayError::bad_request(e.body_text()))
    }
}

/// Path parameters, deserialized; one that is not UTF-8 once decoded is a 400.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, GatewayError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| GatewayError::bad_request(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::{Path, Query};

    #[derive(Deserialize)]
    struct Limit {
        #[serde(rename = "limit")]
        _limit: Option<u32>,
    }

    async fn answer(uri: &str) -> (StatusCode, String, serde_json::Value) {
        let app = Router::new()
            .route("/q", get(|Query(_): Query<Limit>| async { "ok" }))
            .route("/p/{name}", get(|Path(n): Path<String>| async move { n }));
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        let status = response.status();
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, kind, json)
    }

    #[tokio::test]
    async fn a_bad_query_or_path_is_a_json_400_naming_it() {
        let (status, kind, json) = answer("/q?limit=null").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(kind, "application/json");
        let error = json["error"].as_str().expect("an error message");
        assert!(error.contains("limit"), "{error}");

        let (status, kind, json) = answer("/p/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(kind, "application/json");
        assert!(json["error"].is_string(), "{json}");

        let (status, _, _) = answer("/q?limit=7").await;
        assert_eq!(status, StatusCode::OK);
    }
}
