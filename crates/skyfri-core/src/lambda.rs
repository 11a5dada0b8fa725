//! AWS Lambda compatibility that needs no I/O: how an HTTP call becomes an API Gateway HTTP
//! API event (payload format 2.0) and how a handler's answer becomes an HTTP response again,
//! exactly as API Gateway maps them; the function's ARN; the error JSON of the Runtime API.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// The account id in ARNs: skyfri has no AWS accounts (LocalStack uses the same).
pub const ACCOUNT_ID: &str = "000000000000";
/// The only version a skyfri function has.
pub const FUNCTION_VERSION: &str = "$LATEST";
/// The region a gateway reports unless configured otherwise.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Memory AWS gives a function that does not say (MB).
pub const DEFAULT_MEMORY_MB: u64 = 128;
/// Set on a call to a Lambda function's replica by the gateway's Invoke API: the body is the
/// event itself, not an HTTP call to wrap as an API Gateway event.
pub const EVENT_HEADER: &str = "x-skyfri-lambda-event";
/// The value of [`EVENT_HEADER`] for a raw event.
pub const EVENT_RAW: &str = "raw";
/// The caller's address as the gateway determined it (the peer, or the client behind a
/// trusted proxy), set by the gateway on calls to Lambda functions' replicas: their events'
/// `requestContext.http.sourceIp`. A caller's own is dropped.
pub const SOURCE_IP_HEADER: &str = "x-skyfri-source-ip";
/// On a handler error: the error type the runtime reported (the body is its error JSON).
pub const FUNCTION_ERROR_HEADER: &str = "x-skyfri-function-error";

/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME`.
pub fn function_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}")
}

/// One HTTP call, as the function's replica received it.
#[derive(Debug, Clone)]
pub struct HttpCall<'a> {
    pub method: &'a str,
    /// The path the function sees (after `/function/NAME`), percent-encoded as sent.
    pub path: &'a str,
    /// The query string without `?`, as sent.
    pub query: &'a str,
    /// `HTTP/1.1`.
    pub protocol: &'a str,
    /// In the order received; names in any case.
    pub headers: &'a [(String, Vec<u8>)],
    pub body: &'a [u8],
    pub source_ip: &'a str,
    pub request_id: &'a str,
    pub time: DateTime<Utc>,
}

/// The API Gateway HTTP API (payload format 2.0) event of `call`.
pub fn http_event(call: &HttpCall<'_>) -> Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    let mut content_type = None;
    for (name, value) in call.headers {
        let name = name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(value).into_owned();
        if name == "cookie" {
            // API Gateway moves cookies out of the headers into `cookies`, one per pair.
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
            );
            continue;
        }
        if name == "content-type" {
            content_type = Some(value.clone());
        }
        headers
            .entry(name)
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let host = headers.get("host").cloned().unwrap_or_default();
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();
    let path = if call.path.is_empty() { "/" } else { call.path };
    let mut event = Map::new();
    event.insert("version".into(), json!("2.0"));
    event.insert("routeKey".into(), json!("$default"));
    event.insert("rawPath".into(), json!(path));
    event.insert("rawQueryString".into(), json!(call.query));
    if !cookies.is_empty() {
        event.insert("cookies".into(), json!(cookies));
    }
    event.insert("headers".into(), json!(headers));
    let query = query_parameters(call.query);
    if !query.is_empty() {
        event.insert("queryStringParameters".into(), json!(query));
    }
    event.insert(
        "requestContext".into(),
        json!({
            "accountId": ACCOUNT_ID,
            "apiId": "skyfri",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or_default(),
            "http": {
                "method": call.method,
                "path": path,
                "protocol": call.protocol,
                "sourceIp": call.source_ip,
                "userAgent": user_agent,
            },
            "requestId": call.request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": call.time.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": call.time.timestamp_millis(),
        }),
    );
    let binary = !call.body.is_empty()
        && (std::str::from_utf8(call.body).is_err()
            || !content_type.as_deref().is_none_or(is_text));
    if !call.body.is_empty() {
        let body = if binary {
            base64::engine::general_purpose::STANDARD.encode(call.body)
        } else {
            String::from_utf8_lossy(call.body).into_owned()
        };
        event.insert("body".into(), json!(body));
    }
    event.insert("isBase64Encoded".into(), json!(binary));
    Value::Object(event)
}

/// Media types whose bodies API Gateway passes as text.
fn is_text(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
                | "application/yaml"
                | "application/x-yaml"
        )
}

/// `queryStringParameters`: decoded keys and values, a repeated key's values joined with
/// commas in the order given.
fn query_parameters(query: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (percent_decode(key), percent_decode(value));
        out.entry(key)
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// `%XX` escapes decoded (`+` stays `+`, as in API Gateway's parameters); a malformed escape
/// is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP answer to a call, made from a handler's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// In order; `set-cookie` may repeat.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a handler's result is no HTTP answer (API Gateway answers those with a 500; skyfri
/// with a 502, the function's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the handler's result is not JSON: {0}")]
    NotJson(String),
    #[error("the handler's statusCode {0} is not an HTTP status (100 to 599)")]
    BadStatus(String),
    #[error("the handler's body is marked isBase64Encoded but is not base64: {0}")]
    BadBase64(String),
    #[error("the handler's {0} must be {1}")]
    BadField(&'static str, &'static str),
}

/// Maps a handler's result (the bytes the runtime posted) back to HTTP as API Gateway does
/// for payload format 2.0: an object with `statusCode` gives the status, `headers`,
/// `cookies` (each a `Set-Cookie`) and `body` (base64-decoded when `isBase64Encoded`);
/// anything else is the body of a 200 `application/json` answer (a string as its text).
pub fn http_answer(result: &[u8]) -> Result<HttpAnswer, AnswerError> {
    let value: Value = if result.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(result).map_err(|e| AnswerError::NotJson(e.to_string()))?
    };
    let json_200 = |body: Vec<u8>| HttpAnswer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    };
    let object = match value {
        Value::Object(o) if o.contains_key("statusCode") => o,
        Value::String(s) => return Ok(json_200(s.into_bytes())),
        Value::Null => return Ok(json_200(Vec::new())),
        other => return Ok(json_200(other.to_string().into_bytes())),
    };
    let status = match &object["statusCode"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s| (100..=599).contains(s))
    .ok_or_else(|| AnswerError::BadStatus(object["statusCode"].to_string()))?;
    let mut headers = Vec::new();
    match object.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (name, value) in h {
                headers.push((name.to_ascii_lowercase(), scalar_text(value)?));
            }
        }
        Some(_) => return Err(AnswerError::BadField("headers", "an object")),
    }
    match object.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cookies)) => {
            for cookie in cookies {
                headers.push(("set-cookie".into(), scalar_text(cookie)?));
            }
        }
        Some(_) => return Err(AnswerError::BadField("cookies", "an array of strings")),
    }
    let base64 = object
        .get("isBase64Encoded")
        .is_some_and(|b| b == &Value::Bool(true));
    let body = match object.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if base64 => base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| AnswerError::BadBase64(e.to_string()))?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        // API Gateway takes a non-string body as its JSON text.
        Some(other) => other.to_string().into_bytes(),
    };
    Ok(HttpAnswer {
        status: u16::try_from(status).unwrap_or(502),
        headers,
        body,
    })
}

/// A header value from JSON: strings as they are, numbers and booleans as their text.
fn scalar_text(value: &Value) -> Result<String, AnswerError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(AnswerError::BadField(
            "headers and cookies",
            "strings (or numbers)",
        )),
    }
}

/// The error JSON of the Runtime API (`{"errorMessage", "errorType", "stackTrace"}`).
pub fn error_json(error_type: &str, message: &str) -> Vec<u8> {
    json!({"errorMessage": message, "errorType": error_type, "stackTrace": []})
        .to_string()
        .into_bytes()
}

/// The error type of an error JSON a runtime posted, else `fallback` (the
/// `Lambda-Runtime-Function-Error-Type` header, say).
pub fn error_type(body: &[u8], fallback: Option<&str>) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errorType")?.as_str().map(str::to_string))
        .filter(|t| !t.is_empty())
        .or_else(|| fallback.map(str::to_string))
        .unwrap_or_else(|| "Unhandled".to_string())
}

/// The message of an error JSON, else the body as text.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errorMessage")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

#[cfg(test)]
mod tests;
