//! What the gateway reads from request headers, on arbitrary values: the client address from
//! `X-Forwarded-For` (behind a trusted proxy), the caller's `X-Call-Id`, a function's
//! `Retry-After`, the scope a `/system` route needs, and what the Lambda Invoke API reads (a
//! SigV4 `Authorization`, its canonical path and query, a function name or ARN). None may
//! panic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (a, b, c) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );

    let mut headers = HeaderMap::new();
    for value in [a, b] {
        if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.append(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    let trusted = ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]
        .map(|n| skyfri_gateway::auth::parse_proxy(n).expect("a valid network"));
    let peer = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let _ = skyfri_gateway::auth::client_ip(peer, &headers, &trusted);
    let _ = skyfri_gateway::auth::client_ip(None, &headers, &trusted);

    let _ = skyfri_gateway::async_calls::validate_call_id(a);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = skyfri_core::retry::parse_retry_after(b, now);
    let _ = skyfri_core::auth::system_need(a, c);
    let _ = skyfri_core::auth::Scope::parse(c);
    let _ = skyfri_core::quantity::parse_memory(c);
    let _ = skyfri_core::quantity::parse_duration(c);

    use skyfri_gateway::lambda::{sigv4, Target};
    if let Ok(auth) = sigv4::parse_authorization(c) {
        let _ = auth.scope();
    }
    let _ = sigv4::canonical_path(a);
    let _ = sigv4::canonical_query(b);
    let _ = Target::parse(c);
    let _ = skyfri_gateway::lambda::function_in_path(a);
});
