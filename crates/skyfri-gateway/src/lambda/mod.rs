//! The AWS Lambda Invoke API (`POST /2015-03-31/functions/NAME/invocations`), so that AWS
//! SDKs pointed at skyfri (`endpoint_url`) invoke its functions unchanged. Calls go through
//! the invoke path of `/function` (limits, replica choice, metrics, usage, access log) and
//! the async queue of `/async-function` ([`invoke`]); callers authenticate with skyfri tokens,
//! as SigV4 credentials ([`sigv4`]) or bearer tokens; errors are answered as Lambda answers
//! them ([`AwsError`]).
//!
//! A lambda template's replica takes a call marked [`EVENT_HEADER`]`: raw` as the event
//! itself (not an API Gateway event), and answers a handler error with a 502 that carries
//! [`FUNCTION_ERROR_HEADER`] and the error JSON; only this API sets the mark (it is removed
//! from `/function` and `/async-function` calls).

pub mod invoke;
pub mod sigv4;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use skyfri_core::Deployment;

pub use skyfri_core::lambda::{EVENT_HEADER, EVENT_RAW, FUNCTION_ERROR_HEADER};
/// Where the API lives.
pub const PATH_PREFIX: &str = "/2015-03-31/functions/";
const PATH_SUFFIX: &str = "/invocations";
/// The only version skyfri has of a function.
pub const LATEST: &str = skyfri_core::lambda::FUNCTION_VERSION;

/// Whether a deployment runs a Lambda handler (a `lambda-*` template).
pub fn is_lambda(d: &Deployment) -> bool {
    d.template.is_lambda()
}

/// A function as the API names it: `NAME`, `NAME:QUALIFIER`, `ACCOUNT:function:NAME[:Q]` or
/// `arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:Q]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub qualifier: Option<String>,
}

impl Target {
    pub fn parse(function_name: &str) -> Result<Target, String> {
        let parts: Vec<&str> = function_name.split(':').collect();
        let (name, qualifier) = match parts.as_slice() {
            [name] => (*name, None),
            [name, q] => (*name, Some(*q)),
            [_account, "function", name] => (*name, None),
            [_account, "function", name, q] => (*name, Some(*q)),
            ["arn", _, "lambda", _, _, "function", name] => (*name, None),
            ["arn", _, "lambda", _, _, "function", name, q] => (*name, Some(*q)),
            _ => {
                return Err(format!(
                    "FunctionName {function_name:?} is not a name, a partial ARN (ACCOUNT:function:NAME) or a function ARN"
                ))
            }
        };
        if name.is_empty() || qualifier.is_some_and(str::is_empty) {
            return Err(format!("FunctionName {function_name:?} has an empty part"));
        }
        Ok(Target {
            name: name.to_string(),
            qualifier: qualifier.map(str::to_string),
        })
    }
}

/// The `FunctionName` segment of an Invoke API path, decoded.
pub fn function_segment(path: &str) -> Option<String> {
    let segment = path.strip_prefix(PATH_PREFIX)?.strip_suffix(PATH_SUFFIX)?;
    if segment.contains('/') {
        return None;
    }
    String::from_utf8(sigv4::percent_decode(segment)).ok()
}

/// The function an Invoke API path names, for the access log.
pub fn function_in_path(path: &str) -> Option<String> {
    let target = Target::parse(&function_segment(path)?).ok()?;
    Some(crate::invoke::function_name(&target.name).to_string())
}

/// An error as Lambda answers it: the status, `X-Amzn-ErrorType`, and
/// `{"Type": "User"|"Service", "Message": ...}` (which AWS SDKs raise as that error type).
#[derive(Debug)]
pub struct AwsError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// Lambda's `Reason` on throttling.
    pub reason: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl AwsError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> AwsError {
        AwsError {
            status,
            kind,
            message: message.into(),
            reason: None,
            retry_after: None,
        }
    }

    pub fn forbidden(kind: &'static str, message: impl Into<String>) -> AwsError {
        AwsError::new(StatusCode::FORBIDDEN, kind, message)
    }

    pub fn invalid(message: impl Into<String>) -> AwsError {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "Type": if self.status.is_server_error() { "Service" } else { "User" },
            "Message": self.message,
        });
        if let Some(reason) = self.reason {
            body["Reason"] = reason.into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        let h = response.headers_mut();
        h.insert(
            HeaderName::from_static("x-amzn-errortype"),
            HeaderValue::from_static(self.kind),
        );
        if let Some(secs) = self.retry_after {
            h.insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_as_the_api_takes_them() {
        let t = |name: &str, q: Option<&str>| {
            Ok(Target {
                name: name.into(),
                qualifier: q.map(str::to_string),
            })
        };
        assert_eq!(Target::parse("hello"), t("hello", None));
        assert_eq!(Target::parse("hello:$LATEST"), t("hello", Some("$LATEST")));
        assert_eq!(
            Target::parse("123456789012:function:hello"),
            t("hello", None)
        );
        assert_eq!(
            Target::parse("arn:aws:lambda:eu-north-1:123456789012:function:hello:prod"),
            t("hello", Some("prod"))
        );
        for bad in [
            "",
            "hello:",
            "a:b:c",
            "arn:aws:s3:eu-north-1:1:function:hello",
            "arn:aws:lambda:r:1:function:hello:1:2",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            function_segment("/2015-03-31/functions/arn%3Aaws%3Alambda%3Aeu-north-1%3A1%3Afunction%3Ahello/invocations").as_deref(),
            Some("arn:aws:lambda:eu-north-1:1:function:hello")
        );
        assert_eq!(
            function_in_path("/2015-03-31/functions/hello.openfaas-fn/invocations").as_deref(),
            Some("hello")
        );
        assert_eq!(
            function_segment("/2015-03-31/functions/a/b/invocations"),
            None
        );
        assert_eq!(function_segment("/function/hello"), None);
    }
}
