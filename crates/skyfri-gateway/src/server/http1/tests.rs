//! skyfri's own HTTP/1.1 path on a real socket: what a client sees of it, and of the hand-over
//! to hyper on the same connection.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::{serve, ServerLimits};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn echo(req: Request) -> String {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().is_some();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let tag = parts
        .headers
        .get("x-tag")
        .map(|v| v.to_str().unwrap_or("?").to_string());
    format!(
        "{} {} {:?} peer={peer} tag={} body={}",
        parts.method,
        parts.uri,
        parts.version,
        tag.unwrap_or_default(),
        String::from_utf8_lossy(&body)
    )
}

/// Calls of `/function/slow` dropped before they finished (cancelled), by all servers of the
/// test binary: each test looks for its own tag.
static CANCELLED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

async fn slow(req: Request) -> &'static str {
    struct Running(String);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Ok(mut c) = CANCELLED.lock() {
                c.push(std::mem::take(&mut self.0));
            }
        }
    }
    let tag = req
        .headers()
        .get("x-tag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let running = Running(tag);
    tokio::time::sleep(Duration::from_secs(10)).await;
    std::mem::forget(running);
    "done"
}

/// An answer of unknown length, in two parts; `fail` ends it with an error after the first.
fn stream(fail: bool) -> Body {
    let second: Result<Bytes, std::io::Error> = if fail {
        Err(std::io::Error::other("cut"))
    } else {
        Ok(Bytes::from_static(b"two"))
    };
    Body::from_stream(futures_util::stream::iter([
        Ok(Bytes::from_static(b"one-")),
        second,
    ]))
}

async fn start() -> Result<SocketAddr, Box<dyn std::error::Error>> {
    start_with(ServerLimits {
        header_timeout: Duration::from_millis(600),
        ..ServerLimits::default()
    })
    .await
}

async fn start_with(limits: ServerLimits) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let app = Router::new()
        .route("/function/echo", any(echo))
        .route("/function/echo/{*rest}", any(echo))
        .route("/function/stream", any(|| async { stream(false) }))
        .route("/function/fail", any(|| async { stream(true) }))
        .route(
            "/function/nocontent",
            any(|| async {
                (
                    axum::http::StatusCode::NO_CONTENT,
                    [("content-length", "0")],
                )
            }),
        )
        .route(
            "/function/closing",
            any(|| async { ([("connection", "close")], "bye") }),
        )
        .route("/function/slow", any(slow))
        .route("/system/info", any(echo));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(
        listener,
        app,
        limits,
        None,
        0,
        std::future::pending(),
    ));
    Ok(addr)
}

/// Sends `bytes` on a new connection and reads until the server closes it (at most 5 s).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(bytes).await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await??;
    Ok(String::from_utf8(got)?)
}

#[tokio::test]
async fn pipelined_calls_are_answered_in_order_and_close_ends_the_connection() -> TestResult {
    let addr = start().await?;
    let got = exchange(
        addr,
        b"GET /function/echo/a?x=1 HTTP/1.1\r\nHost: h\r\nX-Tag: first\r\n\r\n\
          POST /function/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
          GET /function/echo HTTP/1.1\r\nHost: h\r\nX-Tag: last\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let answers: Vec<&str> = got.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 3, "{got}");
    assert!(
        answers[0].ends_with("GET /function/echo/a?x=1 HTTP/1.1 peer=true tag=first body="),
        "{got}"
    );
    assert!(
        answers[1].ends_with("POST /function/echo HTTP/1.1 peer=true tag= body=hello"),
        "{got}"
    );
    assert!(answers[2].contains("connection: close\r\n"), "{got}");
    assert!(answers[2].ends_with("tag=last body="), "{got}");
    for a in &answers {
        assert!(
            a.contains("content-length: ") && a.contains("date: "),
            "{a}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn answers_of_unknown_length_are_chunked_or_close_delimited_for_http_1_0() -> TestResult {
    let addr = start().await?;
    let got = exchange(
        addr,
        b"GET /function/stream HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(
        got.ends_with("\r\n\r\n4\r\none-\r\n3\r\ntwo\r\n0\r\n\r\n"),
        "{got}"
    );

    let got = exchange(
        addr,
        b"GET /function/stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await?;
    assert!(!got.contains("chunked"), "{got}");
    assert!(
        got.contains("connection: close\r\n") && got.ends_with("\r\n\r\none-two"),
        "{got}"
    );

    // HTTP/1.0 keeps the connection only when it asks and the length is known.
    let got = exchange(addr, b"GET /function/echo HTTP/1.0\r\n\r\n").await?;
    assert!(
        got.contains("connection: close\r\n") && got.ends_with("HTTP/1.0 peer=true tag= body="),
        "{got}"
    );
    let mut tcp = TcpStream::connect(addr).await?;
    for _ in 0..2 {
        tcp.write_all(b"GET /function/echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await?;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await??;
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(
            got.contains("connection: keep-alive\r\n") && got.ends_with("body="),
            "{got}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_body_that_fails_cuts_the_answer_and_head_sends_no_body() -> TestResult {
    let addr = start().await?;
    let got = exchange(addr, b"GET /function/fail HTTP/1.1\r\n\r\n").await?;
    assert!(
        got.ends_with("\r\n\r\n4\r\none-\r\n"),
        "no last chunk after a failed body: {got}"
    );

    let got = exchange(
        addr,
        b"HEAD /function/echo HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\n"),
        "{got}"
    );
    Ok(())
}

#[tokio::test]
async fn other_requests_go_to_hyper_with_what_was_read() -> TestResult {
    let addr = start().await?;
    // A call, then an admin request on the same connection: hyper serves the rest of it.
    let got = exchange(
        addr,
        b"GET /function/echo HTTP/1.1\r\nX-Tag: own\r\n\r\n\
          GET /system/info HTTP/1.1\r\nX-Tag: hyper\r\n\r\n\
          GET /function/echo HTTP/1.1\r\nX-Tag: after\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let tags: Vec<&str> = got
        .match_indices("tag=")
        .map(|(i, _)| &got[i..i + 9])
        .collect();
    assert_eq!(tags, ["tag=own b", "tag=hyper", "tag=after"], "{got}");

    // A body that comes after its head, and a chunked one: hyper reads them.
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(
        b"POST /function/echo HTTP/1.1\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    tcp.write_all(b"late").await?;
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut got)).await??;
    assert!(got.ends_with("body=late"), "{got}");
    let got = exchange(
        addr,
        b"POST /function/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await?;
    assert!(got.ends_with("body=abc"), "{got}");

    // A length with a sign, or two that differ: hyper's 400, not a body read here.
    for bad in ["+5", "5, 6"] {
        let req = format!("POST /function/echo HTTP/1.1\r\nContent-Length: {bad}\r\n\r\nhello");
        let got = exchange(addr, req.as_bytes()).await?;
        assert!(got.starts_with("HTTP/1.1 400"), "{bad}: {got}");
    }

    // Malformed: hyper's 400.
    let got = exchange(addr, b"GET /function/echo HTTP/1.1\r\nBad Header\r\n\r\n").await?;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    Ok(())
}

#[tokio::test]
async fn an_idle_or_slow_connection_is_closed_at_the_header_timeout() -> TestResult {
    let addr = start().await?;
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /function/echo HTTP/1.1\r\n\r\n")
        .await?;
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await?;
    assert!(n > 0);
    // Half a head, then nothing: closed within the timeout and a tick.
    tcp.write_all(b"GET /function/echo HTTP/1.1\r\nX-Tag:")
        .await?;
    let start = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        "{took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_stopping_server_closes_idle_connections_at_once() -> TestResult {
    let app = Router::new().route("/function/echo", any(echo));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = ServerLimits {
        header_timeout: Duration::from_secs(60),
        ..ServerLimits::default()
    };
    let server = tokio::spawn(serve(listener, app, limits, None, 0, async {
        let _ = stopped.await;
    }));
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /function/echo HTTP/1.1\r\n\r\n")
        .await?;
    let mut buf = [0u8; 1024];
    assert!(tcp.read(&mut buf).await? > 0);
    let _ = stop.send(());
    // The server ends (it waits for its connections) and the idle one is closed, long before
    // its header timeout.
    tokio::time::timeout(Duration::from_secs(3), server).await???;
    let n = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await??;
    assert_eq!(n, 0);
    Ok(())
}

#[tokio::test]
async fn the_configured_head_bounds_hold_on_this_path_too() -> TestResult {
    let addr = start_with(ServerLimits {
        max_headers: 3,
        max_header_bytes: 8192,
        ..ServerLimits::default()
    })
    .await?;
    let got = exchange(
        addr,
        b"GET /function/echo HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let got = exchange(
        addr,
        b"GET /function/echo HTTP/1.1\r\nA: 1\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let big = format!(
        "GET /function/echo HTTP/1.1\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(10_000)
    );
    let got = exchange(addr, big.as_bytes()).await?;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    Ok(())
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_still_has_one_deadline() -> TestResult {
    let addr = start().await?; // header timeout 600 ms
    let mut tcp = TcpStream::connect(addr).await?;
    let start = std::time::Instant::now();
    let head = b"GET /function/echo HTTP/1.1\r\nX-Tag: slow\r\n\r\n";
    let mut closed = false;
    for &b in head.iter() {
        if tcp.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(150), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => panic!("answered a head that took {:?}", start.elapsed()),
            Err(_) => {}
        }
    }
    let took = start.elapsed();
    assert!(closed, "the whole head was taken over {took:?}");
    assert!(
        took < Duration::from_millis(600) + 4 * crate::server::header_timer::TICK,
        "{took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_call() -> TestResult {
    let addr = start().await?;
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /function/slow HTTP/1.1\r\nX-Tag: gone\r\n\r\n")
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tcp);
    let start = std::time::Instant::now();
    while !CANCELLED
        .lock()
        .map(|c| c.iter().any(|t| t == "gone"))
        .unwrap_or(false)
    {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the call ran on after its client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn framing_follows_the_status_the_method_and_the_app() -> TestResult {
    let addr = start().await?;
    let got = exchange(
        addr,
        b"GET /function/nocontent HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(got.starts_with("HTTP/1.1 204 No Content\r\n"), "{got}");
    assert!(!got.contains("content-length"), "{got}");

    let got = exchange(
        addr,
        b"HEAD /function/closing HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(
        got.contains("content-length: 3\r\n") && got.ends_with("\r\n\r\n"),
        "{got}"
    );

    // The app's own `Connection: close` ends the connection after its answer.
    let got = exchange(
        addr,
        b"GET /function/closing HTTP/1.1\r\n\r\nGET /function/echo HTTP/1.1\r\n\r\n",
    )
    .await?;
    assert!(
        got.contains("connection: close\r\n") && got.ends_with("bye"),
        "{got}"
    );
    Ok(())
}
