//! SigV4 against AWS's published test suite (`../sigv4_testsuite`, Apache-2.0, as botocore
//! ships it): for every request, the canonical request, the string to sign and the
//! signature must be AWS's, and the signed request must verify; then what must not.

use std::path::{Path, PathBuf};

use chrono::TimeZone;
use http::{HeaderName, HeaderValue};

use super::*;

const SECRET: &[u8] = b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lambda/sigv4_testsuite")
}

/// Directories holding a `NAME.req`, with their names relative to the suite.
fn cases() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![suite()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("suite readable") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "req") {
                found.push(dir.clone());
            }
        }
    }
    found.sort();
    found
}

fn read(dir: &Path, ext: &str) -> String {
    let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
    std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).expect("vector file")
}

/// A raw `.req`: method, path, query, headers (folded lines joined by a space), body.
struct Raw {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn parse(raw: &str) -> Raw {
    let (head, body) = match raw.split_once("\n\n") {
        Some((h, b)) => (h, b.as_bytes().to_vec()),
        None => (raw, Vec::new()),
    };
    let mut lines = head.lines();
    let first = lines.next().expect("request line");
    let (method, rest) = first.split_once(' ').expect("method");
    let target = rest.strip_suffix(" HTTP/1.1").expect("HTTP/1.1");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        let (k, v) = line.split_once(':').expect("header");
        fields.push((k.to_string(), v.to_string()));
    }
    let mut headers = HeaderMap::new();
    for (k, v) in fields {
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(&v).expect("value"),
        );
    }
    Raw {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers,
        body,
    }
}

fn request(raw: &Raw) -> Request<'_> {
    Request {
        method: &raw.method,
        path: &raw.path,
        query: &raw.query,
        headers: &raw.headers,
        authority: None,
        body: &raw.body,
    }
}

fn signed_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2015, 8, 30, 12, 36, 0)
        .single()
        .expect("a time")
}

#[test]
fn the_signing_key_is_awss() {
    // AWS's documented example of the derivation (IAM, us-east-1, 2015-08-30).
    let key = signing_key(SECRET, "20150830", "us-east-1", "iam");
    assert_eq!(
        hex(&key),
        "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
    );
}

#[test]
fn every_vector_of_the_suite() {
    let cases = cases();
    assert!(cases.len() >= 25, "found {} vectors", cases.len());
    for dir in cases {
        let name = dir
            .strip_prefix(suite())
            .unwrap_or(&dir)
            .display()
            .to_string();
        // The signed request (some vectors' `.req` lacks a header the signer adds), without
        // its Authorization: the `.authz` is the one to check (one `.sreq` has a stale copy).
        let mut raw = parse(&read(&dir, "sreq"));
        raw.headers.remove(http::header::AUTHORIZATION);
        let authz = read(&dir, "authz");
        let auth = parse_authorization(authz.trim_end()).expect("the suite's Authorization");
        assert_eq!(auth.access_key, "AKIDEXAMPLE", "{name}");

        let creq = canonical_request(&request(&raw), auth.signed_headers)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(creq, read(&dir, "creq"), "{name}: canonical request");
        let (_, amz_date) = request_time(&raw.headers).expect("a time");
        let sts = string_to_sign(&amz_date, &auth.scope(), &creq);
        assert_eq!(sts, read(&dir, "sts"), "{name}: string to sign");
        let key = signing_key(SECRET, auth.date, auth.region, auth.service);
        assert_eq!(signature(&key, &sts), auth.signature, "{name}: signature");

        // And the request as signed verifies, with the right secret only.
        assert_eq!(
            verify(&request(&raw), &auth, SECRET, signed_at()),
            Ok(()),
            "{name}"
        );
        assert_eq!(
            verify(&request(&raw), &auth, b"another secret", signed_at()),
            Err(SigV4Error::Mismatch),
            "{name}"
        );
    }
}

/// get-vanilla, signed, as a mutable request.
fn vanilla() -> (Raw, String) {
    let dir = suite().join("post-x-www-form-urlencoded");
    let raw = parse(&read(&dir, "req"));
    let authz = read(&dir, "authz");
    (raw, authz.trim_end().to_string())
}

#[test]
fn changes_after_signing_are_caught() {
    let (raw, authz) = vanilla();
    let auth = parse_authorization(&authz).expect("valid");
    let check = |raw: &Raw| verify(&request(raw), &auth, SECRET, signed_at());
    assert_eq!(check(&raw), Ok(()));

    let mut body = parse(&read(&suite().join("post-x-www-form-urlencoded"), "req"));
    body.body = b"Param1=value2".to_vec();
    assert_eq!(check(&body), Err(SigV4Error::Mismatch), "body");

    let mut path = parse(&read(&suite().join("post-x-www-form-urlencoded"), "req"));
    path.path = "/other".into();
    assert_eq!(check(&path), Err(SigV4Error::Mismatch), "path");

    let mut query = parse(&read(&suite().join("post-x-www-form-urlencoded"), "req"));
    query.query = "Qualifier=%24LATEST".into();
    assert_eq!(check(&query), Err(SigV4Error::Mismatch), "query");

    let mut header = parse(&read(&suite().join("post-x-www-form-urlencoded"), "req"));
    header.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    assert_eq!(check(&header), Err(SigV4Error::Mismatch), "signed header");

    // An unsigned header may change.
    let mut unsigned = parse(&read(&suite().join("post-x-www-form-urlencoded"), "req"));
    unsigned
        .headers
        .insert("user-agent", HeaderValue::from_static("boto3"));
    assert_eq!(check(&unsigned), Ok(()), "unsigned header");

    // A declared body hash must be the body's.
    let mut declared = parse(&read(&suite().join("post-x-www-form-urlencoded"), "req"));
    declared.headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    assert!(matches!(check(&declared), Err(SigV4Error::Incomplete(_))));
}

#[test]
fn the_clock_window_is_fifteen_minutes_either_way() {
    let (raw, authz) = vanilla();
    let auth = parse_authorization(&authz).expect("valid");
    let at = |minutes: i64| {
        verify(
            &request(&raw),
            &auth,
            SECRET,
            signed_at() + chrono::Duration::minutes(minutes),
        )
    };
    assert_eq!(at(15), Ok(()));
    assert_eq!(at(-15), Ok(()));
    assert!(matches!(at(16), Err(SigV4Error::Time(m)) if m.contains("signature expired")));
    assert!(matches!(at(-16), Err(SigV4Error::Time(_))));
}

#[test]
fn host_and_date_must_be_signed_and_present() {
    let (raw, _) = vanilla();
    let sign = |signed: &str| {
        let creq = canonical_request(&request(&raw), signed).expect("creq");
        let sts = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            &creq,
        );
        let sig = signature(
            &signing_key(SECRET, "20150830", "us-east-1", "service"),
            &sts,
        );
        format!("{ALGORITHM} Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={sig}")
    };
    for signed in ["x-amz-date", "host"] {
        let authz = sign(signed);
        let auth = parse_authorization(&authz).expect("well formed");
        assert!(
            matches!(
                verify(&request(&raw), &auth, SECRET, signed_at()),
                Err(SigV4Error::Incomplete(_))
            ),
            "{signed}"
        );
    }
    let authz = sign("host;x-amz-date");
    let auth = parse_authorization(&authz).expect("well formed");
    assert_eq!(verify(&request(&raw), &auth, SECRET, signed_at()), Ok(()));
    // A signed header the request lacks.
    let missing = authz.replace("host;x-amz-date", "host;x-amz-date;x-extra");
    let auth = parse_authorization(&missing).expect("well formed");
    assert!(matches!(
        verify(&request(&raw), &auth, SECRET, signed_at()),
        Err(SigV4Error::Incomplete(m)) if m.contains("x-extra")
    ));
}

#[test]
fn malformed_authorization_headers() {
    let good = "AWS4-HMAC-SHA256 Credential=ci/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    let auth = parse_authorization(good).expect("valid");
    assert_eq!(
        (auth.access_key, auth.region, auth.service),
        ("ci", "us-east-1", "lambda")
    );
    assert!(is_sigv4(good));
    assert!(!is_sigv4("Bearer sky_x"));
    for bad in [
        "AWS4-HMAC-SHA1 Credential=ci/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=ci/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=ci/20150830/us-east-1/lambda, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=ci/2015083/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=ci/20150830/us-east-1/lambda/aws4_request, SignedHeaders=Host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=ci/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=5FA00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=ci/20150830/us-east-1/lambda/aws4_request, Credential=x/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    ] {
        assert!(
            matches!(parse_authorization(bad), Err(SigV4Error::Incomplete(_))),
            "{bad}"
        );
    }
}

#[test]
fn paths_and_queries() {
    // As SDKs send a Lambda ARN: encoded once in the URL, once more when signed.
    assert_eq!(
        canonical_path("/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Afunction%3Ahello/invocations"),
        "/2015-03-31/functions/arn%253Aaws%253Alambda%253Aus-east-1%253A1%253Afunction%253Ahello/invocations"
    );
    assert_eq!(canonical_path(""), "/");
    assert_eq!(canonical_path("/a/b/../c/./"), "/a/c/");
    assert_eq!(
        canonical_query("Qualifier=%24LATEST"),
        "Qualifier=%24LATEST"
    );
    assert_eq!(canonical_query("b=2&a&a=1"), "a=&a=1&b=2");
    assert_eq!(canonical_query("x=a%20b+c"), "x=a%20b%2Bc");
}
