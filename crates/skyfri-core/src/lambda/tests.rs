//! Table tests against the examples of AWS's "Working with AWS Lambda proxy integrations for
//! HTTP APIs" (payload format 2.0) page.

use chrono::TimeZone;
use serde_json::json;

use super::*;

fn headers(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect()
}

fn call<'a>(
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, Vec<u8>)],
    body: &'a [u8],
) -> HttpCall<'a> {
    HttpCall {
        method,
        path,
        query,
        protocol: "HTTP/1.1",
        headers,
        body,
        source_ip: "192.0.2.1",
        request_id: "id",
        // AWS's example: "12/Mar/2020:19:03:58 +0000" (its timeEpoch is of another day).
        time: Utc
            .with_ymd_and_hms(2020, 3, 12, 19, 3, 58)
            .single()
            .expect("a valid time"),
    }
}

#[test]
fn the_documented_example_event() {
    let h = headers(&[
        ("Header1", b"value1"),
        ("header2", b"value1"),
        ("Header2", b"value2"),
        ("Cookie", b"cookie1; cookie2"),
        ("Host", b"id.execute-api.us-east-1.amazonaws.com"),
        ("User-Agent", b"agent"),
        ("content-type", b"text/plain"),
    ]);
    let event = http_event(&call(
        "POST",
        "/my/path",
        "parameter1=value1&parameter1=value2&parameter2=value",
        &h,
        b"Hello from Lambda",
    ));
    let expected = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/my/path",
        "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
        "cookies": ["cookie1", "cookie2"],
        "headers": {
            "header1": "value1",
            "header2": "value1,value2",
            "host": "id.execute-api.us-east-1.amazonaws.com",
            "user-agent": "agent",
            "content-type": "text/plain",
        },
        "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "skyfri",
            "domainName": "id.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "id",
            "http": {
                "method": "POST",
                "path": "/my/path",
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "agent",
            },
            "requestId": "id",
            "routeKey": "$default",
            "stage": "$default",
            "time": "12/Mar/2020:19:03:58 +0000",
            "timeEpoch": 1584039838000_i64,
        },
        "body": "Hello from Lambda",
        "isBase64Encoded": false,
    });
    assert_eq!(event, expected);
}

/// What a case is, its path, query, headers and body, and the event fields expected.
type EventCase<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Vec<(String, Vec<u8>)>,
    &'a [u8],
    Value,
);

#[test]
fn events_table() {
    let png: &[u8] = &[0x89, b'P', b'N', b'G', 0, 1, 2, 0xff];
    // (what, path, query, headers, body, expected fields)
    let cases: Vec<EventCase<'_>> = vec![
        (
            "no body, no query, no cookies: those keys are left out",
            "/",
            "",
            headers(&[]),
            b"",
            json!({"rawPath": "/", "rawQueryString": "", "headers": {}, "isBase64Encoded": false}),
        ),
        (
            "an empty path is /",
            "",
            "",
            headers(&[]),
            b"",
            json!({"rawPath": "/"}),
        ),
        (
            "binary body: base64",
            "/img",
            "",
            headers(&[("Content-Type", b"image/png")]),
            png,
            json!({"body": "iVBORwABAv8=", "isBase64Encoded": true}),
        ),
        (
            "UTF-8 text with a binary media type is base64 too",
            "/up",
            "",
            headers(&[("content-type", b"application/octet-stream")]),
            b"abc",
            json!({"body": "YWJj", "isBase64Encoded": true}),
        ),
        (
            "JSON is text",
            "/",
            "",
            headers(&[("content-type", b"application/json; charset=utf-8")]),
            br#"{"a":1}"#,
            json!({"body": "{\"a\":1}", "isBase64Encoded": false}),
        ),
        (
            "invalid UTF-8 without a content type is base64",
            "/",
            "",
            headers(&[]),
            png,
            json!({"isBase64Encoded": true}),
        ),
        (
            "multi-value query, decoded, + kept, a key without value",
            "/q",
            "a=1&a=2&b=x%20y&c=1+2&flag",
            headers(&[]),
            b"",
            json!({
                "rawQueryString": "a=1&a=2&b=x%20y&c=1+2&flag",
                "queryStringParameters": {"a": "1,2", "b": "x y", "c": "1+2", "flag": ""},
            }),
        ),
        (
            "several Cookie headers, all into cookies",
            "/",
            "",
            headers(&[("cookie", b"a=1; b=2"), ("Cookie", b"c=3")]),
            b"",
            json!({"cookies": ["a=1", "b=2", "c=3"], "headers": {}}),
        ),
        (
            "the path is kept percent-encoded",
            "/a%2Fb/c d",
            "",
            headers(&[]),
            b"",
            json!({"rawPath": "/a%2Fb/c d"}),
        ),
    ];
    for (what, path, query, h, body, expected) in cases {
        let event = http_event(&call("GET", path, query, &h, body));
        for (key, value) in expected.as_object().expect("test setup") {
            assert_eq!(&event[key], value, "{what}: {key} in {event:#}");
        }
        for absent in ["cookies", "queryStringParameters", "body"] {
            if expected.get(absent).is_none() && what.contains("left out") {
                assert!(event.get(absent).is_none(), "{what}: {absent}");
            }
        }
    }
}

fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> HttpAnswer {
    HttpAnswer {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
    }
}

#[test]
fn answers_table() {
    let json_ct = [("content-type", "application/json")];
    let cases: Vec<(&str, &str, HttpAnswer)> = vec![
        (
            "AWS: a string is the body of a 200 JSON answer",
            r#""Hello from Lambda!""#,
            answer(200, &json_ct, b"Hello from Lambda!"),
        ),
        (
            "AWS: an object without statusCode is the JSON body",
            r#"{"message":"Hello from Lambda!"}"#,
            answer(200, &json_ct, br#"{"message":"Hello from Lambda!"}"#),
        ),
        (
            "AWS: the documented full response, cookies as Set-Cookie",
            r#"{"cookies":["Cookie_1=Value1; Expires=21 Oct 2021 07:48 GMT","Cookie_2=Value2; Max-Age=78000"],
                "isBase64Encoded":false,"statusCode":200,"headers":{"headerName":"headerValue"},
                "body":"Hello from Lambda!"}"#,
            answer(
                200,
                &[
                    ("headername", "headerValue"),
                    (
                        "set-cookie",
                        "Cookie_1=Value1; Expires=21 Oct 2021 07:48 GMT",
                    ),
                    ("set-cookie", "Cookie_2=Value2; Max-Age=78000"),
                ],
                b"Hello from Lambda!",
            ),
        ),
        (
            "a binary body",
            r#"{"statusCode":201,"headers":{"content-type":"image/png"},"body":"iVBORwABAv8=","isBase64Encoded":true}"#,
            answer(
                201,
                &[("content-type", "image/png")],
                &[0x89, b'P', b'N', b'G', 0, 1, 2, 0xff],
            ),
        ),
        (
            "statusCode alone, a number header, a string status",
            r#"{"statusCode":"404","headers":{"x-n":3}}"#,
            answer(404, &[("x-n", "3")], b""),
        ),
        (
            "a number, an array, null",
            "42",
            answer(200, &json_ct, b"42"),
        ),
        ("an array", "[1,2]", answer(200, &json_ct, b"[1,2]")),
        ("null", "null", answer(200, &json_ct, b"")),
        ("nothing", "", answer(200, &json_ct, b"")),
        (
            "an object body is its JSON",
            r#"{"statusCode":200,"body":{"a":1}}"#,
            answer(200, &[], br#"{"a":1}"#),
        ),
    ];
    for (what, result, expected) in cases {
        assert_eq!(
            http_answer(result.as_bytes()).as_ref(),
            Ok(&expected),
            "{what}"
        );
    }
}

#[test]
fn bad_answers() {
    for (result, why) in [
        ("not json", "not JSON"),
        (r#"{"statusCode":700}"#, "700"),
        (r#"{"statusCode":"ok"}"#, "\"ok\""),
        (r#"{"statusCode":200,"headers":[1]}"#, "headers"),
        (r#"{"statusCode":200,"cookies":"a=1"}"#, "cookies"),
        (
            r#"{"statusCode":200,"body":"%%%","isBase64Encoded":true}"#,
            "base64",
        ),
    ] {
        let err = http_answer(result.as_bytes()).expect_err("a bad answer");
        assert!(err.to_string().contains(why), "{result}: {err}");
    }
}

#[test]
fn errors_and_arns() {
    assert_eq!(
        function_arn("eu-north-1", "hello"),
        "arn:aws:lambda:eu-north-1:000000000000:function:hello"
    );
    let body = br#"{"errorMessage":"boom","errorType":"ValueError","stackTrace":[]}"#;
    assert_eq!(error_type(body, Some("Runtime.Other")), "ValueError");
    assert_eq!(error_type(b"x", Some("Runtime.Other")), "Runtime.Other");
    assert_eq!(error_type(b"x", None), "Unhandled");
    assert_eq!(error_message(body), "boom");
    let made: Value =
        serde_json::from_slice(&error_json("Sandbox.Timedout", "late")).expect("test setup");
    assert_eq!(
        made,
        json!({"errorMessage": "late", "errorType": "Sandbox.Timedout", "stackTrace": []})
    );
}
