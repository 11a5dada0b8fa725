//! AWS Signature Version 4, the server's side: what an AWS SDK put in `Authorization`, and
//! whether the request was signed with the secret of the access key it names.
//!
//! The canonical request is rebuilt from what arrived (method; the path normalised and
//! URI-encoded once more, as SDKs do for every service but S3; the query decoded, encoded
//! and sorted; the signed headers, values trimmed with inner runs of spaces collapsed,
//! repeated headers joined with commas; the SHA-256 of the body), then the string to sign,
//! the signing key (`AWS4` + secret, HMAC-SHA256 over date, region, service and
//! `aws4_request`) and the signature, which is compared with the one sent in constant time.
//! A request is refused when its `X-Amz-Date` is more than [`MAX_SKEW`] away from now, as
//! AWS does; within that window a captured request can be replayed, as with AWS.
//! Unit-tested against AWS's published test suite (`sigv4_testsuite/`, from botocore).

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The one algorithm served.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's time may be from the gateway's clock, either way.
pub const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(15);
/// `X-Amz-Date`'s format (ISO 8601 basic).
const AMZ_DATE: &str = "%Y%m%dT%H%M%SZ";

type HmacSha256 = Hmac<Sha256>;

/// Why a signed request is refused; each names what AWS would answer (`aws_type`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// The `Authorization` header is not a well-formed SigV4 one.
    #[error("{0}")]
    Incomplete(String),
    /// The request's time is missing, unreadable or too far from now.
    #[error("{0}")]
    Time(String),
    /// The signature does not match.
    #[error("the request signature we calculated does not match the signature you provided: check the secret access key (the token) and the signing method")]
    Mismatch,
}

impl SigV4Error {
    /// The `X-Amzn-ErrorType` AWS answers with.
    pub fn aws_type(&self) -> &'static str {
        match self {
            SigV4Error::Incomplete(_) => "IncompleteSignatureException",
            SigV4Error::Time(_) | SigV4Error::Mismatch => "InvalidSignatureException",
        }
    }
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
/// Signature=...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key: &'a str,
    /// `YYYYMMDD`.
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    /// As sent: lower-case names joined with `;`.
    pub signed_headers: &'a str,
    /// Lower-case hex.
    pub signature: &'a str,
}

impl Authorization<'_> {
    /// `DATE/REGION/SERVICE/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Whether an `Authorization` value claims SigV4.
pub fn is_sigv4(value: &str) -> bool {
    value
        .split_once(' ')
        .is_some_and(|(scheme, _)| scheme == ALGORITHM)
}

/// Reads a SigV4 `Authorization` value.
pub fn parse_authorization(value: &str) -> Result<Authorization<'_>, SigV4Error> {
    let incomplete = |m: &str| SigV4Error::Incomplete(format!("Authorization: {m}"));
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| incomplete(&format!("only {ALGORITHM} is supported")))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(|| {
            incomplete("expected Credential=..., SignedHeaders=..., Signature=...")
        })?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(incomplete(&format!("unknown field {k:?}"))),
        };
        if slot.replace(v).is_some() {
            return Err(incomplete(&format!("{k} given twice")));
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(incomplete(
            "Credential, SignedHeaders and Signature are all needed",
        ));
    };
    let mut scope = credential.split('/');
    let (Some(access_key), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(incomplete(
            "Credential must be ACCESS-KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
        ));
    };
    if access_key.is_empty() || region.is_empty() || service.is_empty() {
        return Err(incomplete("Credential has an empty part"));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(incomplete("the Credential's date must be YYYYMMDD"));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(incomplete("Signature must be 64 lower-case hex digits"));
    }
    if signed_headers.is_empty()
        || signed_headers
            .split(';')
            .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(incomplete(
            "SignedHeaders must be lower-case names separated by ';'",
        ));
    }
    Ok(Authorization {
        access_key,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// A request as it arrived, for its canonical form.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The query as sent, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The URI's authority, for `host` when there is no `Host` header (HTTP/2).
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

/// The request time: `X-Amz-Date`, else `Date` (an HTTP date), in `X-Amz-Date`'s format.
pub fn request_time(headers: &HeaderMap) -> Result<(DateTime<Utc>, String), SigV4Error> {
    if let Some(v) = headers.get("x-amz-date") {
        let text = v.to_str().unwrap_or("");
        let at = NaiveDateTime::parse_from_str(text, AMZ_DATE)
            .map_err(|_| SigV4Error::Time(format!("X-Amz-Date {text:?} is not YYYYMMDDTHHMMSSZ")))?
            .and_utc();
        return Ok((at, text.to_string()));
    }
    let text = headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SigV4Error::Time("the request has no X-Amz-Date (or Date) header".into()))?;
    let at = DateTime::parse_from_rfc2822(text)
        .map_err(|_| SigV4Error::Time(format!("Date {text:?} is not an HTTP date")))?
        .with_timezone(&Utc);
    Ok((at, at.format(AMZ_DATE).to_string()))
}

/// Encodes every byte but the unreserved ones (`A-Z a-z 0-9 - _ . ~`) as `%XX`.
fn uri_encode(s: &[u8], out: &mut String) {
    for &b in s {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Decodes `%XX` escapes (a malformed one is kept as it is).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The path without empty, `.` and `..` segments, encoded segment by segment (on top of
/// the encoding it arrived with); a trailing `/` is kept.
pub fn canonical_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 8);
    for seg in &segments {
        out.push('/');
        uri_encode(seg.as_bytes(), &mut out);
    }
    if out.is_empty() || (path.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    out
}

/// The query's parameters, decoded then encoded, sorted by name then value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(&percent_decode(k), &mut ek);
            uri_encode(&percent_decode(v), &mut ev);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as signed: trimmed, runs of spaces (and tabs) made one space.
fn canonical_value(v: &[u8]) -> String {
    let text = String::from_utf8_lossy(v);
    text.split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a body, in hex.
pub fn payload_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// The canonical request of `req` over the headers `signed` names.
pub fn canonical_request(req: &Request<'_>, signed: &str) -> Result<String, SigV4Error> {
    let mut out = String::with_capacity(256 + req.path.len() + req.query.len());
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_path(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed.split(';') {
        let values: Vec<String> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| canonical_value(v.as_bytes()))
            .collect();
        let value = match (values.is_empty(), name, req.authority) {
            (false, _, _) => values.join(","),
            (true, "host", Some(authority)) => authority.to_string(),
            (true, _, _) => {
                return Err(SigV4Error::Incomplete(format!(
                    "SignedHeaders names {name:?}, which the request does not have"
                )))
            }
        };
        out.push_str(name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(signed);
    out.push('\n');
    out.push_str(&payload_hash(req.body));
    Ok(out)
}

/// The string to sign for a canonical request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The key a secret signs with on `date` in `region` for `service`.
pub fn signing_key(secret: &[u8], date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut k = Vec::with_capacity(4 + secret.len());
    k.extend_from_slice(b"AWS4");
    k.extend_from_slice(secret);
    let k = hmac(&k, date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// The signature, in lower-case hex.
pub fn signature(key: &[u8; 32], string_to_sign: &str) -> String {
    hex(&hmac(key, string_to_sign.as_bytes()))
}

/// Checks that `req` was signed, as `auth` says, with `secret`, at a time within
/// [`MAX_SKEW`] of `now`, by a date the credential's scope agrees with.
pub fn verify(
    req: &Request<'_>,
    auth: &Authorization<'_>,
    secret: &[u8],
    now: DateTime<Utc>,
) -> Result<(), SigV4Error> {
    let (at, amz_date) = request_time(req.headers)?;
    if (at - now).abs() > MAX_SKEW {
        return Err(SigV4Error::Time(format!(
            "signature expired: the request was signed at {amz_date}, more than 15 minutes from the gateway's clock ({}); check the caller's clock",
            now.format(AMZ_DATE)
        )));
    }
    if !amz_date.starts_with(auth.date) {
        return Err(SigV4Error::Incomplete(format!(
            "the Credential's date {} is not the request's ({amz_date})",
            auth.date
        )));
    }
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    if !signed.contains(&"host") {
        return Err(SigV4Error::Incomplete(
            "SignedHeaders must include host".into(),
        ));
    }
    let date_header = if req.headers.contains_key("x-amz-date") {
        "x-amz-date"
    } else {
        "date"
    };
    if !signed.contains(&date_header) {
        return Err(SigV4Error::Incomplete(format!(
            "SignedHeaders must include {date_header}"
        )));
    }
    // A body hash the client declares must be the body's (S3-style unsigned payloads are
    // not accepted: the body is always signed).
    if let Some(declared) = req.headers.get("x-amz-content-sha256") {
        if declared.as_bytes() != payload_hash(req.body).as_bytes() {
            return Err(SigV4Error::Incomplete(
                "X-Amz-Content-Sha256 is not the SHA-256 of the body".into(),
            ));
        }
    }
    let creq = canonical_request(req, auth.signed_headers)?;
    let sts = string_to_sign(&amz_date, &auth.scope(), &creq);
    let key = signing_key(secret, auth.date, auth.region, auth.service);
    let expected = signature(&key, &sts);
    if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
        Ok(())
    } else {
        Err(SigV4Error::Mismatch)
    }
}

#[cfg(test)]
mod tests;
