//! The replica client against scripted replicas: raw bytes on a TCP listener.

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[test]
fn authorities_are_valid_hosts() {
    let a = authority(&Endpoint::Unix("/run/e-1.sock".into()));
    assert_eq!(a, "u2f72756e2f652d312e736f636b");
    assert!(a.parse::<http::uri::Authority>().is_ok());
    let tcp = authority(&Endpoint::Tcp(([127, 0, 0, 1], 8080).into()));
    assert_eq!(tcp, "127.0.0.1:8080");
}

/// Reads one request (head and `Content-Length` body) from `s`; `None` at the end of stream.
async fn request(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            while got.len() < end + 4 + length {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            return Some(String::from_utf8_lossy(&got).to_string());
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A replica that answers each request with `answer(connection, request number on it, the
/// request)`: the bytes to send, and whether to close the connection after them.
async fn replica(
    answer: impl Fn(usize, usize, &str) -> (Vec<u8>, bool) + Send + Sync + 'static,
) -> Result<(Endpoint, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let answer = Arc::new(answer);
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        let mut connection = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            let (answer, requests) = (Arc::clone(&answer), Arc::clone(&counted));
            connection += 1;
            let c = connection;
            tokio::spawn(async move {
                let mut n = 0;
                while let Some(req) = request(&mut s).await {
                    requests.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                    let (bytes, close) = answer(c, n, &req);
                    if s.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Ok((Endpoint::Tcp(addr), requests))
}

async fn send(up: &Upstream, e: &Endpoint, method: &Method, body: &[u8]) -> Result<Answer> {
    let headers = HeaderMap::new();
    let head = Head {
        method,
        path: "/",
        query: None,
        headers: &headers,
        set: &[],
    };
    Ok(up.send(e, &head, &Bytes::copy_from_slice(body)).await?)
}

async fn call(up: &Upstream, e: &Endpoint) -> Result<String> {
    let answer = send(up, e, &Method::GET, b"").await?;
    let body = answer.body.collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}

fn idle(up: &Upstream, e: &Endpoint) -> usize {
    up.slot(e).idle.lock().map(|i| i.len()).unwrap_or(0)
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn connections_are_reused_and_a_closed_one_is_replaced() -> Result {
    let up = Upstream::default();
    // Kept alive: one connection serves every call, with the endpoint as its Host.
    let (e, _) = replica(|_, _, req| {
        let host = req
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .unwrap_or_default();
        (ok(host), false)
    })
    .await?;
    for _ in 0..3 {
        assert_eq!(call(&up, &e).await?, authority(&e));
    }
    assert_eq!(idle(&up, &e), 1);
    // Closed after each answer (and saying so): nothing pooled, no error.
    let (once, _) = replica(|_, _, _| {
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            true,
        )
    })
    .await?;
    for _ in 0..3 {
        assert_eq!(call(&up, &once).await?, "ok");
    }
    assert_eq!(idle(&up, &once), 0);
    // Nothing listens: an error, not a hang.
    let gone = Endpoint::Unix("/nonexistent/skyfri-test.sock".into());
    assert!(matches!(call(&up, &gone).await, Err(e) if e.to_string().contains("cannot connect")));
    Ok(())
}

#[tokio::test]
async fn a_stale_connection_is_retried_once_on_a_new_one() -> Result {
    let up = Upstream::default();
    // The replica closes each connection after one answer without saying so: the pooled
    // connection is stale at the next call, which goes out on a new connection instead.
    let (e, requests) = replica(|c, _, _| (ok(&c.to_string()), true)).await?;
    for c in 1..=3 {
        assert_eq!(call(&up, &e).await?, c.to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    Ok(())
}

#[tokio::test]
async fn a_call_the_replica_may_have_seen_is_not_sent_again() -> Result {
    let up = Upstream::default();
    // The second call on a connection gets half a head, then the connection closes.
    let (e, requests) = replica(|_, n, _| match n {
        1 => (ok("first"), false),
        _ => (b"HTTP/1.1 200 OK\r\ncontent-".to_vec(), true),
    })
    .await?;
    assert_eq!(call(&up, &e).await?, "first");
    let err = call(&up, &e).await.err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("the replica closed the connection in the middle of its answer's head")
    );
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // A new connection closed without an answer is an error too, and not retried.
    let (mute, requests) = replica(|_, _, _| (Vec::new(), true)).await?;
    let err = send(&up, &mute, &Method::POST, b"x").await.err();
    assert!(
        matches!(&err, Some(e) if e.to_string().contains("without answering")),
        "{:?}",
        err.map(|e| e.to_string())
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_replica_that_closes_mid_answer_is_a_clear_error() -> Result {
    let up = Upstream::default();
    let (e, _) = replica(|_, _, _| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd".to_vec(),
            true,
        )
    })
    .await?;
    let answer = send(&up, &e, &Method::GET, b"").await?;
    assert_eq!(answer.status, StatusCode::OK);
    let err = answer.body.collect().await.err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("the replica closed the connection before the end of the answer's body (after 4 bytes of the answer's body)")
    );
    assert_eq!(idle(&up, &e), 0);
    Ok(())
}

#[tokio::test]
async fn chunked_answers_pass_through_as_they_come() -> Result {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let e = Endpoint::Tcp(listener.local_addr()?);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = request(&mut s).await;
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  transfer-encoding: chunked\r\n\r\n6;ext=1\r\ntick 1\r\n",
            )
            .await;
        let _ = released.await;
        let _ = s
            .write_all(b"6\r\ntick 2\r\n0\r\nx-trailer: t\r\n\r\n")
            .await;
        // Kept open: the next call comes on the same connection.
        if request(&mut s).await.is_some() {
            let _ = s.write_all(&ok("again")).await;
        }
    });
    let up = Upstream::default();
    let mut answer = send(&up, &e, &Method::GET, b"").await?;
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    assert!(answer.headers.get("transfer-encoding").is_none());
    // The first chunk comes before the replica sends the rest.
    let first = answer.body.frame().await.ok_or("no frame")??;
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"tick 1"[..]));
    let _ = release.send(());
    let rest = answer.body.collect().await?.to_bytes();
    assert_eq!(rest, "tick 2");
    assert_eq!(idle(&up, &e), 1);
    assert_eq!(call(&up, &e).await?, "again");
    Ok(())
}

#[tokio::test]
async fn informational_answers_are_skipped_and_upgrades_refused() -> Result {
    let up = Upstream::default();
    let (e, _) = replica(|_, n, _| match n {
        1 => (
            [&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"[..], &ok("hi")].concat(),
            false,
        ),
        _ => (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
                .to_vec(),
            false,
        ),
    })
    .await?;
    assert_eq!(call(&up, &e).await?, "hi");
    let err = call(&up, &e).await.err().map(|e| e.to_string());
    assert!(
        matches!(&err, Some(e) if e.contains("101 Switching Protocols")),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bodiless_and_close_delimited_answers() -> Result {
    let up = Upstream::default();
    let (e, _) = replica(|_, n, _| match n {
        // HEAD: a length, no body; 204: nothing.
        1 => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec(),
            false,
        ),
        2 => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
        // No length: the body ends with the connection.
        _ => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(), true),
    })
    .await?;
    let head = send(&up, &e, &Method::HEAD, b"").await?;
    assert_eq!(head.headers["content-length"], "5");
    assert!(hyper::body::Body::is_end_stream(&head.body));
    assert_eq!(idle(&up, &e), 1);
    let empty = send(&up, &e, &Method::DELETE, b"").await?;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);
    assert_eq!(idle(&up, &e), 1);
    assert_eq!(call(&up, &e).await?, "until the end");
    assert_eq!(idle(&up, &e), 0);
    Ok(())
}

#[tokio::test]
async fn requests_carry_their_fields_and_body() -> Result {
    let up = Upstream::default();
    let (e, _) = replica(|_, _, req| (ok(req), false)).await?;
    let mut headers = HeaderMap::new();
    headers.insert("x-kept", HeaderValue::from_static("1"));
    headers.insert("connection", HeaderValue::from_static("x-gone"));
    headers.insert("host", HeaderValue::from_static("caller"));
    headers.insert("content-length", HeaderValue::from_static("999"));
    headers.insert("x-call-id", HeaderValue::from_static("forged"));
    let set = [(
        HeaderName::from_static("x-call-id"),
        HeaderValue::from_static("real"),
    )];
    let head = Head {
        method: &Method::POST,
        path: "/a/b",
        query: Some("q=1"),
        headers: &headers,
        set: &set,
    };
    let big = Bytes::from(vec![b'z'; INLINE_BODY + 1]);
    for body in [Bytes::from_static(b"hello"), big.clone(), Bytes::new()] {
        let answer = up.send(&e, &head, &body).await?;
        let seen = answer.body.collect().await?.to_bytes();
        let seen = String::from_utf8_lossy(&seen);
        let (head_seen, body_seen) = seen.split_once("\r\n\r\n").ok_or("no head")?;
        assert!(
            head_seen.starts_with("POST /a/b?q=1 HTTP/1.1\r\n"),
            "{head_seen}"
        );
        assert!(head_seen.contains("\r\nx-kept: 1\r\n"), "{head_seen}");
        assert!(head_seen.contains("\r\nx-call-id: real"), "{head_seen}");
        assert!(!head_seen.contains("forged") && !head_seen.contains("caller"));
        assert!(!head_seen.contains("connection") && !head_seen.contains("999"));
        assert!(
            head_seen.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head_seen}"
        );
        assert_eq!(body_seen.as_bytes(), &body[..]);
    }
    assert_eq!(idle(&up, &e), 1);
    Ok(())
}
