//! skyfri's own HTTP/1.1 for calls of functions, in front of hyper's.
//!
//! A function call is the request the gateway exists for, and most are plain: a request head
//! with, at most, a small body that arrives with it. This path serves those on the
//! connection's task with no more than the call needs: the head parsed once (httparse), the
//! request handed to the app, the answer's head and its first bytes written in one write
//! (`bench/profile.sh`: 33,037 -> 30,339 instructions per proxied call when it came in).
//!
//! Everything else goes to hyper, for the rest of the connection: the path hands hyper the
//! connection with the bytes it has read ([`Rewind`]), and hyper parses them again. That is
//! any request that is not `/function/NAME...` in origin form, that has a body not yet wholly
//! read (or `Transfer-Encoding`), `Expect`, `Upgrade`, a head beyond [`MAX_HEAD`] bytes or
//! [`MAX_FIELDS`] fields (or the configured bounds, when lower), and anything malformed
//! (hyper answers it 400 or 431 as before).
//!
//! What holds here as with hyper: a request head must arrive within the header timeout of
//! the connection's accept or its previous answer (the slowloris bound; the idle keep-alive
//! bound), pipelined requests are answered in order, HTTP/1.0 gets keep-alive only when it asks
//! and the answer's length is known, answers of unknown length are chunked (HTTP/1.1) or end
//! with the connection (HTTP/1.0), an answer whose body fails is cut (the connection closes,
//! as hyper does), a call whose client has gone is dropped (looked at once it has run
//! [`WATCH_AFTER`]), and a stopping server closes idle connections at once and the others
//! after their answer.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower::ServiceExt;

use super::header_timer::HeaderTimer;
use super::{App, ServerLimits};
use crate::upstream::field;

/// The largest request head this path takes; larger ones go to hyper, which holds them to
/// the configured limits.
const MAX_HEAD: usize = 16 * 1024;
/// The most header fields this path takes (parsed on the stack); more go to hyper.
const MAX_FIELDS: usize = 64;
/// A call running this long starts watching its connection: a client that has gone cancels it.
/// Shorter calls do not pay for the watch (a read per call).
const WATCH_AFTER: Duration = Duration::from_millis(200);
/// Answer bytes gathered before they are written, at most; and the write buffer kept between
/// answers, at most.
const MAX_KEPT: usize = 64 * 1024;
/// How much a read asks for at least.
const READ_SIZE: usize = 8 * 1024;
/// Body bytes up to this are copied behind the answer's head (one write); larger ones are
/// written on their own.
const COPY_BELOW: usize = 16 * 1024;

/// What the server shares with this path's connections.
pub(super) struct Shared<'a, S> {
    pub peer: SocketAddr,
    pub app: &'a S,
    pub limits: &'a ServerLimits,
    pub timer: &'a HeaderTimer,
    /// Set when the server stops (then [`HeaderTimer::wake_all`] wakes the waiting reads).
    pub stopping: &'a AtomicBool,
}

/// Serves `io` while its requests are function calls this path takes. `None`: the
/// connection has ended. `Some`: the connection, with the bytes read of it, for hyper.
pub(super) async fn serve<S: App, T>(mut io: T, shared: Shared<'_, S>) -> Option<(T, Bytes)>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = Vec::with_capacity(1024);
    // Heads beyond the configured bounds go to hyper, which answers them 431.
    let bounds = Bounds {
        head: shared.limits.max_header_bytes.min(MAX_HEAD),
        fields: shared.limits.max_headers.min(MAX_FIELDS),
    };
    loop {
        // The head must be here by then: set when the first read has to wait, and kept for
        // every read of this head (a client sending a byte at a time gains nothing).
        let mut deadline = None;
        let request = loop {
            match parse(&mut buf, shared.peer, bounds) {
                Parsed::Call(call) => break call,
                Parsed::Other => return Some((io, buf.freeze())),
                Parsed::Bad => {
                    let _ = io.write_all(BAD_REQUEST).await;
                    let _ = io.shutdown().await;
                    return None;
                }
                Parsed::Partial if buf.len() >= bounds.head => return Some((io, buf.freeze())),
                Parsed::Partial => {}
            }
            match read(&mut io, &mut buf, &shared, &mut deadline).await {
                Read::Some => {}
                // A head cut short, a timeout or a stop: the connection just ends, as
                // hyper ends an idle one (a client mid-head gets no answer from either).
                Read::End | Read::TimedOut | Read::Stopping => {
                    let _ = io.shutdown().await;
                    return None;
                }
            }
        };
        let Call {
            request,
            mut keep_alive,
            http10,
        } = request;
        let head_only = request.method() == Method::HEAD;
        let call = shared.app.clone().oneshot(request);
        let Some(response) =
            call_while_connected(call, &mut io, &mut buf, bounds.head, &shared).await
        else {
            // The client has gone: the call is dropped (cancelled), as hyper does.
            return None;
        };
        keep_alive &= !shared.stopping.load(Ordering::Acquire);
        let ended = answer(
            &mut io,
            &mut out,
            response,
            head_only,
            http10,
            &mut keep_alive,
        )
        .await;
        if ended.is_err() {
            // Dropped, not shut down: a cut answer must not look like a whole one (TLS's
            // close_notify, or the end of an answer delimited by the connection's close).
            return None;
        }
        if !keep_alive {
            let _ = io.shutdown().await;
            return None;
        }
        if out.capacity() > MAX_KEPT {
            out = Vec::with_capacity(1024);
        }
    }
}

/// A request this path serves, and how its connection goes on.
struct Call {
    request: Request<Body>,
    keep_alive: bool,
    http10: bool,
}

// A request is made once per call and moved out at once: no box.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Call(Call),
    /// Not (yet) a whole head.
    Partial,
    /// For hyper.
    Other,
    /// A whole head that `http` refuses: answered 400, and the connection closed.
    Bad,
}

/// The largest head this path takes: the configured bounds, at most its own.
#[derive(Clone, Copy)]
struct Bounds {
    head: usize,
    fields: usize,
}

/// Takes a request off the front of `buf` when it is a call this path serves whole.
fn parse(buf: &mut BytesMut, peer: SocketAddr, bounds: Bounds) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // Where the target and each field are in the head, as (start, end) offsets.
    let mut spans: [crate::upstream::FieldSpan; MAX_FIELDS] = [(0, 0, 0, 0); MAX_FIELDS];
    let (head_len, method, target, http10, count) = {
        let mut fields = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut fields[..bounds.fields],
        ) {
            Ok(httparse::Status::Complete(len)) if len <= bounds.head => len,
            Ok(httparse::Status::Complete(_)) => return Parsed::Other,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        crate::upstream::field_spans(buf, req.headers, &mut spans);
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Parsed::Other;
        };
        if !crate::invoke::is_call(path) || method == "CONNECT" {
            return Parsed::Other;
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parsed::Other;
        };
        let start = path.as_ptr() as usize - buf.as_ptr() as usize;
        (
            len,
            method,
            start..start + path.len(),
            req.version == Some(0),
            req.headers.len(),
        )
    };
    let mut length = 0usize;
    let mut has_length = false;
    let mut keep_alive = !http10;
    for &(n0, n1, v0, v1) in &spans[..count] {
        let name = &buf[n0 as usize..n1 as usize];
        let value = &buf[v0 as usize..v1 as usize];
        if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str().as_bytes()) {
            // Digits only (RFC 9110, 8.6): `parse` would also take a sign.
            let digits = value.trim_ascii();
            let parsed = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<usize>().ok())
                .flatten();
            match parsed {
                Some(n) if !has_length || n == length => (length, has_length) = (n, true),
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case(CONNECTION.as_str().as_bytes()) {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive |= http10;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
            }
        } else if [TRANSFER_ENCODING, EXPECT, UPGRADE]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
        {
            return Parsed::Other;
        }
    }
    // The body must be here whole (a small one comes with its head); else hyper reads it.
    if buf.len() - head_len < length {
        return Parsed::Other;
    }
    let head = buf.split_to(head_len).freeze();
    let body = buf.split_to(length).freeze();
    // httparse has checked the bytes; what `http` refuses beyond that is answered 400.
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target)) else {
        return Parsed::Bad;
    };
    let mut headers = HeaderMap::with_capacity(count);
    for &(n0, n1, v0, v1) in &spans[..count] {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[n0 as usize..n1 as usize]),
            HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize)),
        ) else {
            return Parsed::Bad;
        };
        headers.append(name, value);
    }
    let mut request = Request::new(if body.is_empty() {
        Body::empty()
    } else {
        Body::from(body)
    });
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    request.extensions_mut().insert(ConnectInfo(peer));
    Parsed::Call(Call {
        request,
        keep_alive,
        http10,
    })
}

/// Runs `call`; once it has run [`WATCH_AFTER`], also reads the connection: the end of it (the
/// client has gone) drops the call and gives `None`. Bytes read meanwhile (a pipelined next
/// request) are kept in `buf`, up to `max` of them.
async fn call_while_connected<F, S, T>(
    call: F,
    io: &mut T,
    buf: &mut BytesMut,
    max: usize,
    shared: &Shared<'_, S>,
) -> Option<Response<Body>>
where
    F: Future<Output = Result<Response<Body>, std::convert::Infallible>>,
    T: AsyncRead + Unpin,
{
    let mut call = pin!(call);
    let mut sleep = pin!(None);
    let mut watching = false;
    poll_fn(|cx| {
        if let Poll::Ready(answer) = call.as_mut().poll(cx) {
            return Poll::Ready(match answer {
                Ok(response) => Some(response),
                Err(never) => match never {},
            });
        }
        if !watching {
            if sleep.is_none() {
                sleep.set(Some(shared.timer.sleep_at(Instant::now() + WATCH_AFTER)));
            }
            if let Some(s) = sleep.as_mut().as_pin_mut() {
                if s.poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            watching = true;
        }
        while buf.len() < max {
            let mut chunk = [0u8; 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(None),
                Poll::Ready(Ok(())) => buf.extend_from_slice(read.filled()),
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

enum Read {
    Some,
    /// The client closed (or the read failed).
    End,
    TimedOut,
    Stopping,
}

/// Reads more of the connection into `buf`, by `deadline` (set to the header timeout from now
/// by the first read of a head that has to wait) unless the server stops first.
async fn read<S, T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    shared: &Shared<'_, S>,
    deadline: &mut Option<Instant>,
) -> Read {
    if buf.capacity() - buf.len() < READ_SIZE / 2 {
        buf.reserve(READ_SIZE);
    }
    let mut reading = pin!(io.read_buf(buf));
    let mut sleep = pin!(None);
    poll_fn(|cx| {
        match reading.as_mut().poll(cx) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Read::End),
            Poll::Ready(Ok(_)) => return Poll::Ready(Read::Some),
            Poll::Pending => {}
        }
        if sleep.is_none() {
            let at = *deadline.get_or_insert_with(|| Instant::now() + shared.limits.header_timeout);
            sleep.set(Some(shared.timer.sleep_at(at)));
        }
        if let Some(s) = sleep.as_mut().as_pin_mut() {
            if s.poll(cx).is_ready() {
                return Poll::Ready(Read::TimedOut);
            }
        }
        // Looked at after the sleep is armed: a stop between the two still wakes this task.
        if shared.stopping.load(Ordering::Acquire) {
            return Poll::Ready(Read::Stopping);
        }
        Poll::Pending
    })
    .await
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// How an answer's body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, length unknown).
    Close,
}

/// Writes `response`: its head and as much of the body as is ready in one write, then the
/// rest as it comes (nothing is held back while the body waits: streams pass through).
/// `keep_alive` is cleared when the answer must end the connection. An error: the connection
/// must close now (the client has gone, or the body failed part way).
async fn answer<T: AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut Vec<u8>,
    response: Response<Body>,
    head_only: bool,
    http10: bool,
    keep_alive: &mut bool,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let framing = if head_only || status.is_informational() || status == 204 || status == 304 {
        Framing::None
    } else if let Some(n) = declared.or(body.size_hint().exact()) {
        Framing::Length(n)
    } else if http10 {
        Framing::Close
    } else {
        Framing::Chunked
    };
    if framing == Framing::Close {
        *keep_alive = false;
    }
    // 1xx and 204 have no length (RFC 9110, 8.6); a HEAD answer gives the length its GET's
    // would have, when known.
    let bodiless_status = status.is_informational() || status == 204;
    let head_length = (head_only && declared.is_none())
        .then(|| body.size_hint().exact())
        .flatten()
        .filter(|&n| n > 0);

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status.as_u16()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // One pass over the fields: what the framing replaces is left out, the app's own
    // `Connection: close` ends the connection, and its `Date` stands.
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == CONNECTION {
            let closes = value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            *keep_alive &= !closes;
            continue;
        }
        let framed_here = name == CONTENT_LENGTH && (framing != Framing::None || bodiless_status);
        if framed_here || name == TRANSFER_ENCODING {
            continue;
        }
        dated |= name == DATE;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        date(|d| field(out, b"date", d));
    }
    match framing {
        Framing::Length(n) => field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        Framing::Chunked => field(out, b"transfer-encoding", b"chunked"),
        Framing::None => {
            if let Some(n) = head_length {
                field(
                    out,
                    b"content-length",
                    itoa::Buffer::new().format(n).as_bytes(),
                );
            }
        }
        Framing::Close => {}
    }
    if !*keep_alive {
        field(out, b"connection", b"close");
    } else if http10 {
        field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        return write_out(io, out).await;
    }

    let mut body = pin!(body);
    let mut sent = 0u64;
    loop {
        // What is ready goes behind what is waiting to be written; before waiting for more,
        // that is written.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                write_out(io, out).await?;
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // What came before the failure is passed on; the missing end tells the
                // client the answer was cut.
                write_out(io, out).await?;
                return Err(io::Error::other(e));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue, // trailers are not passed on (as hyper, unless asked for)
            },
        };
        sent += data.len() as u64;
        if let Framing::Length(n) = framing {
            if sent > n {
                return Err(io::Error::other(
                    "the answer's body is longer than its length",
                ));
            }
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if data.len() < COPY_BELOW {
            out.extend_from_slice(&data);
            if out.len() >= MAX_KEPT {
                write_out(io, out).await?;
            }
        } else {
            write_out(io, out).await?;
            write_all(io, data).await?;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(n) if sent < n => {
            write_out(io, out).await?;
            return Err(io::Error::other(
                "the answer's body ended before its length",
            ));
        }
        _ => {}
    }
    write_out(io, out).await
}

/// Writes what `out` holds (and empties it).
async fn write_out<T: AsyncWrite + Unpin>(io: &mut T, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    io.write_all(out).await?;
    out.clear();
    io.flush().await
}

async fn write_all<T: AsyncWrite + Unpin>(io: &mut T, mut data: Bytes) -> io::Result<()> {
    while data.has_remaining() {
        let n = io.write(&data).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data.advance(n);
    }
    io.flush().await
}

/// Calls `f` with the `Date` field's value for now (IMF-fixdate), made once a second per thread.
fn date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
}

/// A connection handed to hyper: the bytes already read of it come first.
pub(super) struct Rewind<T> {
    read: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    pub(super) fn new(io: T, read: Bytes) -> Rewind<T> {
        Rewind { read, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
