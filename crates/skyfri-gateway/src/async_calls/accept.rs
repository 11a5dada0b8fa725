//! `/async-function/NAME[/path]` for any method: the call is stored, then answered 202 with
//! its `X-Call-Id`. `DELETE /async-function/CALL-ID` cancels a queued call (OpenFaaS Pro's
//! route): when the segment names a deployed function, the DELETE is an async call of that
//! function like any other method, not a cancel (`DELETE /system/async/calls/CALL-ID`
//! always cancels).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use skyfri_queue::{AsyncCall, Enqueued};

use super::{queue_error, validate_call_id};
use crate::error::GatewayError;
use crate::invoke::{self, function_name, header_value, split_under};
use crate::state::AppState;

const PREFIX: &str = "/async-function/";

pub async fn accept(State(state): State<AppState>, req: Request) -> Response {
    match enqueue(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn enqueue(state: &AppState, mut req: Request) -> Result<Response, GatewayError> {
    let path = req.uri().path().to_string();
    let (segment, suffix) =
        split_under(PREFIX, &path).ok_or_else(|| GatewayError::not_found("no such route"))?;
    let name = function_name(segment);
    let Some(live) = state.live(name) else {
        if req.method() == Method::DELETE && path.len() == PREFIX.len() + segment.len() {
            let id = percent_decode(segment)
                .ok_or_else(|| GatewayError::bad_request("the call id is not valid UTF-8"))?;
            return cancel(state, &id).await;
        }
        return Err(GatewayError::not_found(format!(
            "function {name:?} is not deployed (see `skyfri ls`)"
        )));
    };
    if let Some(refused) = crate::auth::check_invoke(state, name, live.private, &mut req, None) {
        return Ok(refused);
    }
    crate::limits::admit(state, &live, crate::limits::peer(&req))?;
    let (parts, body) = req.into_parts();
    let id = match parts.headers.get("x-call-id") {
        Some(v) => {
            let id = v.to_str().map_err(|_| {
                GatewayError::bad_request("X-Call-Id must be printable ASCII without spaces")
            })?;
            validate_call_id(id).map_err(GatewayError::bad_request)?;
            id.to_string()
        }
        // Time-ordered (v7): a new id lands at the end of the embedded queue's id index
        // rather than on a random page of it, which makes enqueues faster (compare
        // `cargo run --release -p skyfri-queue --example enqueue_rate -- 64 200000 [ordered]`).
        None => uuid::Uuid::now_v7().to_string(),
    };
    let callback_url = parts
        .headers
        .get("x-callback-url")
        .map(|v| {
            let url = v
                .to_str()
                .map_err(|_| GatewayError::bad_request("X-Callback-Url is not valid text"))?;
            super::callback::validate_url(url).map_err(GatewayError::bad_request)?;
            Ok::<_, GatewayError>(url.to_string())
        })
        .transpose()?;
    let headers = stored_headers(&parts.headers)?;
    let body = invoke::read_body(state, &live, body).await?;
    let call = AsyncCall {
        id: id.clone(),
        function: live.deployment.spec.name.clone(),
        method: parts.method.to_string(),
        path: suffix.to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body,
        callback_url,
        enqueued_at: Utc::now(),
    };
    let duplicate = store(state, call).await?;
    let mut response = StatusCode::ACCEPTED.into_response();
    let h = response.headers_mut();
    h.insert(HeaderName::from_static("x-call-id"), header_value(&id));
    if duplicate {
        h.insert(
            HeaderName::from_static("x-skyfri-duplicate"),
            header_value("true"),
        );
    }
    Ok(response)
}

/// Stores an accepted call in the queue (counted, logged): `true` when its id was known
/// already and nothing was added. The Lambda Invoke API's `Event` calls come this way too.
pub(crate) async fn store(state: &AppState, call: AsyncCall) -> Result<bool, GatewayError> {
    let (function, id) = (call.function.clone(), call.id.clone());
    let enqueued = state.queue.enqueue(call).await.map_err(|e| {
        tracing::error!(function = %function, call_id = %id, error = %e, "async call not stored");
        queue_error(e)
    })?;
    let duplicate = enqueued == Enqueued::Duplicate;
    if duplicate {
        tracing::info!(function = %function, call_id = %id, "async call already known: not added again");
    } else {
        state.metrics.async_accepted(&function);
        tracing::debug!(function = %function, call_id = %id, "async call accepted");
    }
    Ok(duplicate)
}

/// The caller's headers as the queue keeps them: in order, without hop-by-hop ones, and
/// without `X-Skyfri-Lambda-Event` and `X-Skyfri-Source-Ip` (only the gateway's Invoke API
/// may hand a Lambda function a raw event, and only the gateway says where a call came from).
fn stored_headers(headers: &HeaderMap) -> Result<Vec<(String, String)>, GatewayError> {
    headers
        .iter()
        .filter(|(k, _)| {
            !crate::upstream::is_hop_by_hop(k)
                && k.as_str() != skyfri_core::lambda::EVENT_HEADER
                && k.as_str() != skyfri_core::lambda::SOURCE_IP_HEADER
        })
        .map(|(k, v)| {
            let v = v.to_str().map_err(|_| {
                GatewayError::bad_request(format!(
                    "header {k} is not text; async calls keep headers as text"
                ))
            })?;
            Ok((k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

/// `DELETE /async-function/CALL-ID`: 202 as OpenFaaS Pro answers, 404 for an unknown id,
/// 409 once the call runs or has ended.
async fn cancel(state: &AppState, id: &str) -> Result<Response, GatewayError> {
    match crate::api::async_calls::cancel_call(state, id).await {
        Ok(body) => Ok((StatusCode::ACCEPTED, Json(body)).into_response()),
        Err(e) if e.status() == StatusCode::NOT_FOUND => Err(GatewayError::not_found(format!(
            "{id:?} is neither a deployed function nor a known async call"
        ))),
        Err(e) => Err(e),
    }
}

/// Decodes `%XX` escapes in a path segment.
fn percent_decode(segment: &str) -> Option<String> {
    String::from_utf8(crate::lambda::sigv4::percent_decode(segment)).ok()
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, stored_headers};

    #[test]
    fn a_callers_raw_lambda_event_header_is_not_kept() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-skyfri-lambda-event", "raw".parse().expect("value"));
        h.insert("x-skyfri-source-ip", "10.9.9.9".parse().expect("value"));
        h.insert("connection", "close".parse().expect("value"));
        h.insert("x-kept", "1".parse().expect("value"));
        let kept = stored_headers(&h).expect("text headers");
        assert_eq!(kept, [("x-kept".to_string(), "1".to_string())]);
    }

    #[test]
    fn segments_decode() {
        assert_eq!(percent_decode("abc").as_deref(), Some("abc"));
        assert_eq!(percent_decode("a%2Fb%3f").as_deref(), Some("a/b?"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%FF"), None);
    }
}
