//! The connections to replicas: a small HTTP/1.1 client over keep-alive connections per
//! endpoint (unix socket or TCP), kept idle between calls and lent to one call at a time.
//!
//! This is the invoke path's hop, so the call's own task does it, with no connection task and
//! no channel in between (hyper's client spawns a task per connection and hands it every
//! request, and the answer back): [`Upstream::send`] writes the request, reads the answer's
//! head (parsed by `httparse`) and returns an [`AnswerBody`] that reads the rest from the same
//! socket as the caller's side asks for it. Fixed-length, chunked and close-delimited bodies
//! stream through as they come: a chunk is passed on when it arrives (server-sent events).
//!
//! - **Reuse.** A connection goes back to its endpoint's [`Slot`] when its answer has been
//!   read to the end with nothing after it and the replica did not say `close`. One dropped
//!   before (a caller gone, a cut answer, an error) is closed: the replica may still be
//!   sending on it.
//! - **Stale connections.** An idle connection the replica closed meanwhile is dropped when
//!   it is taken from the pool (its end of stream is waiting to be read). One
//!   closed as the request goes out (a race) shows as a failed write: only then, and only for
//!   a connection taken from the pool, is the request sent once more, on a new connection.
//!   Anything else (no answer after the request was written, an answer cut short) is an
//!   error and is not retried: the replica may have run the call.
//! - **Answers.** 1xx answers are skipped; `101 Switching Protocols` is refused (the gateway
//!   does not pass upgraded connections through); heads are bounded ([`MAX_HEAD`] bytes,
//!   [`MAX_HEADERS`] fields). Hop-by-hop fields are left out of the answer's [`HeaderMap`].
//! - **Time.** Nothing here waits on its own: the caller bounds the whole call, connect to
//!   last byte, with its deadline (see `crate::invoke::forward`). Connections idle for longer
//!   than [`IDLE_TIMEOUT`] are closed when next looked at; slots of endpoints that have gone
//!   (a replica stopped) are dropped when a new endpoint is added.
//!
//! Each gateway worker thread (see `crate::server`) has a pool of its own ([`use_pool`]), so a
//! call uses connections registered with its own thread's reactor; other threads (async
//! workers, triggers) share pool 0.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use hyper::body::{Frame, SizeHint};
use skyfri_runtime::Endpoint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// How long a connection may stay idle in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of an answer's head (status line and fields), and of a chunked body's trailers.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header fields of an answer.
pub const MAX_HEADERS: usize = 100;
/// Room asked of the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;
/// Room in an answer's header map for the fields the gateway adds (`X-Call-Id`,
/// `X-Start-Time`, `X-Duration-Seconds`, `X-Skyfri-Cold-Start`): a map that grows rehashes.
const ADDED_FIELDS: usize = 4;
/// Bytes of a chunk-size line (the size in hex and any extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// Pools: one per gateway worker thread, and pool 0 for the others.
const POOLS: usize = 64;

thread_local! {
    static POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Calls made on this thread use pool `n` (modulo the number of pools).
pub fn use_pool(n: usize) {
    POOL.with(|p| p.set(n % POOLS));
}

/// One pool: the endpoints' slots, hashed fast (the keys are the gateway's own addresses).
type Pool = Mutex<HashMap<Endpoint, Arc<Slot>, foldhash::fast::RandomState>>;

/// Every endpoint's idle connections, per pool.
pub struct Upstream {
    pools: Box<[Pool]>,
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream {
            pools: (0..POOLS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// One connection to a replica, with what has been read from it and not used yet.
struct Conn {
    io: ReplicaStream,
    buf: BytesMut,
}

impl Conn {
    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_SIZE);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// One endpoint's idle connections, newest last.
pub struct Slot {
    host: HeaderValue,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

impl Slot {
    /// An idle connection the replica has not closed meanwhile (its end of stream, waiting
    /// to be read, would say so): a call goes out on a stale one only in a race.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.buf.is_empty() && conn.io.quiet() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((conn, Instant::now()));
    }

    fn in_use(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
            || self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|(_, since)| since.elapsed() < IDLE_TIMEOUT)
    }
}

/// The head of a call to a replica.
pub struct Head<'a> {
    pub method: &'a Method,
    /// The path, starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The caller's fields: passed on but for the hop-by-hop ones, `Host` (the replica's own
    /// is sent), `Content-Length` (the body's own) and the names in `set`.
    pub headers: &'a HeaderMap,
    /// Fields the gateway sets, in place of the caller's of the same names.
    pub set: &'a [(HeaderName, HeaderValue)],
}

/// A replica's answer: its status, its end-to-end fields, and its body still on the wire.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: AnswerBody,
}

/// Why a call could not be sent to a replica, or got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("cannot send the request: {0}")]
    Write(io::Error),
    #[error("the connection failed while waiting for the answer: {0}")]
    Read(io::Error),
    #[error("the replica closed the connection {0}")]
    Closed(&'static str),
    /// The replica answered, but not in a way the gateway can pass on.
    #[error("{0}")]
    Answer(String),
}

impl SendError {
    /// Whether the replica failed (crashed, closed), rather than answered wrongly.
    pub fn is_replica_failure(&self) -> bool {
        !matches!(self, SendError::Answer(_))
    }
}

impl Upstream {
    fn slot(&self, endpoint: &Endpoint) -> Arc<Slot> {
        let pool = &self.pools[POOL.with(std::cell::Cell::get)];
        let mut slots = pool.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(endpoint) {
            return Arc::clone(slot);
        }
        // A new endpoint: forget the ones nobody uses any more first.
        slots.retain(|_, slot| slot.in_use());
        let slot = Arc::new(Slot {
            host: HeaderValue::from_str(&authority(endpoint))
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            idle: Mutex::new(Vec::new()),
        });
        slots.insert(endpoint.clone(), Arc::clone(&slot));
        slot
    }

    /// Sends a call to `endpoint` on an idle connection, or a new one, and reads the answer's
    /// head. The connection goes back to the pool when the answer's body has been read.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        head: &Head<'_>,
        body: &Bytes,
    ) -> Result<Answer, SendError> {
        let slot = self.slot(endpoint);
        let request = encode(head, &slot.host, body);
        let body = if body.len() > INLINE_BODY {
            &body[..]
        } else {
            &[]
        };
        if let Some(mut conn) = slot.take() {
            match exchange(&mut conn, &request, body, head.method).await {
                Ok(answer) => return Ok(answer.into_answer(conn, slot)),
                // Closed by the replica as the request went out: it cannot have seen the
                // call, which goes once more on a new connection. Anything later (no
                // answer, a cut one) may follow a run of the call: never sent again.
                Err(SendError::Write(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let mut conn = connect(endpoint).await?;
        exchange(&mut conn, &request, body, head.method)
            .await
            .map(|answer| answer.into_answer(conn, slot))
    }
}

/// The request's head (and its body when small) as it goes on the wire.
fn encode(head: &Head<'_>, host: &HeaderValue, body: &Bytes) -> Vec<u8> {
    let inline = body.len() <= INLINE_BODY;
    let mut out = Vec::with_capacity(512 + if inline { body.len() } else { 0 });
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.as_bytes());
    if let Some(query) = head.query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in head.headers {
        if is_hop_by_hop(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || head.set.iter().any(|(set, _)| set == name)
        {
            continue;
        }
        field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in head.set {
        field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    // As hyper's client: methods that usually carry a body say when they have none.
    let bodiless = matches!(
        *head.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if !body.is_empty() || !bodiless {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if inline {
        out.extend_from_slice(body);
    }
    out
}

/// Writes one header field line (`name: value` and CRLF), for a request or an answer head.
pub(crate) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Fields that concern one connection only, never passed on (RFC 9110, 7.6.1): the one
/// list for the replica hop, async calls and callbacks.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
}

/// An answer's head as read, before its body.
struct Parsed {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    reuse: bool,
}

impl Parsed {
    fn into_answer(self, conn: Conn, slot: Arc<Slot>) -> Answer {
        let mut body = AnswerBody {
            conn: Some(conn),
            slot: self.reuse.then_some(slot),
            framing: self.framing,
            passed: 0,
        };
        if body.is_done() {
            body.finish();
        }
        Answer {
            status: self.status,
            headers: self.headers,
            body,
        }
    }
}

/// Writes the request on `conn` and reads the answer's head.
async fn exchange(
    conn: &mut Conn,
    request: &[u8],
    body: &[u8],
    method: &Method,
) -> Result<Parsed, SendError> {
    let written = async {
        conn.io.write_all(request).await?;
        if !body.is_empty() {
            conn.io.write_all(body).await?;
        }
        Ok::<(), io::Error>(())
    }
    .await;
    written.map_err(SendError::Write)?;
    // Whether any byte of an answer (a 1xx one included) has come.
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            match parse(conn, method) {
                Ok(Parse::Done(parsed)) => return Ok(parsed),
                Ok(Parse::Informational) => continue,
                Ok(Parse::Partial) => {}
                Err(error) => return Err(error),
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(SendError::Answer(format!(
                    "the answer's head is over {} KiB",
                    MAX_HEAD / 1024
                )));
            }
        }
        conn.buf.reserve(READ_SIZE);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) => {
                return Err(SendError::Closed(if answered {
                    "in the middle of its answer's head"
                } else {
                    "without answering"
                }))
            }
            Ok(_) => {}
            Err(e) => return Err(SendError::Read(e)),
        }
    }
}

/// What the start of a connection's buffer holds.
enum Parse {
    /// Not a whole head yet.
    Partial,
    /// A 1xx answer, now taken off the buffer.
    Informational,
    Done(Parsed),
}

/// Parses the answer head at the start of `conn`'s buffer.
fn parse(conn: &mut Conn, method: &Method) -> Result<Parse, SendError> {
    // Where each field is in the head: name and value as (start, end).
    let mut spans: [FieldSpan; MAX_HEADERS] = [(0, 0, 0, 0); MAX_HEADERS];
    let (len, code, version, count) = {
        // Left uninitialised: httparse fills what it uses (cheaper than 100 empty fields).
        let mut fields = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            &conn.buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parse::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(SendError::Answer(format!(
                    "the answer has more than {MAX_HEADERS} header fields"
                )))
            }
            Err(e) => return Err(SendError::Answer(format!("an invalid answer head ({e})"))),
        };
        field_spans(&conn.buf, res.headers, &mut spans);
        (
            len,
            res.code.unwrap_or_default(),
            res.version.unwrap_or_default(),
            res.headers.len(),
        )
    };
    if code == 101 {
        return Err(SendError::Answer(
            "the replica answered 101 Switching Protocols: the gateway does not pass upgraded \
             connections (such as WebSocket) through"
                .into(),
        ));
    }
    if (100..200).contains(&code) {
        conn.buf.advance(len);
        return Ok(Parse::Informational);
    }
    let status = StatusCode::from_u16(code)
        .map_err(|_| SendError::Answer(format!("an invalid answer status {code}")))?;
    let head = conn.buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count + ADDED_FIELDS);
    let mut length: Option<u64> = None;
    let (mut chunked, mut encoded) = (false, false);
    let mut close = version == 0;
    for &(n0, n1, v0, v1) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
            .map_err(|_| SendError::Answer("an invalid header field name".into()))?;
        let raw = &head[v0 as usize..v1 as usize];
        if name == header::CONNECTION {
            for token in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            encoded = true;
            chunked = raw
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|n| length.is_none_or(|l| l == *n))
                .ok_or_else(|| SendError::Answer("an invalid Content-Length".into()))?;
            length = Some(n);
        }
        if is_hop_by_hop(&name) || name == header::HOST {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
            .map_err(|_| SendError::Answer("an invalid header field value".into()))?;
        headers.append(name, value);
    }
    if encoded {
        // Transfer-Encoding decides the length (RFC 9112, 6.3).
        headers.remove(header::CONTENT_LENGTH);
    }
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if encoded {
        Framing::Close
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let reuse = !close && !matches!(framing, Framing::Close);
    Ok(Parse::Done(Parsed {
        status,
        headers,
        framing,
        reuse,
    }))
}

/// Where a field's name and value are in a head: (name start, name end, value start, value end).
pub(crate) type FieldSpan = (u32, u32, u32, u32);

/// Writes into `spans` where each of `fields` (parsed by httparse from `head`) is in `head`,
/// so that the head can be taken apart after the parse's borrow ends.
pub(crate) fn field_spans(head: &[u8], fields: &[httparse::Header<'_>], spans: &mut [FieldSpan]) {
    let base = head.as_ptr() as usize;
    let offset = |p: *const u8| (p as usize - base) as u32;
    for (span, f) in spans.iter_mut().zip(fields) {
        let name = offset(f.name.as_ptr());
        let value = offset(f.value.as_ptr());
        *span = (
            name,
            name + f.name.len() as u32,
            value,
            value + f.value.len() as u32,
        );
    }
}

/// How the answer's body ends.
enum Framing {
    /// After this many more bytes.
    Length(u64),
    Chunked(Chunk),
    /// When the replica closes the connection.
    Close,
    Done,
}

/// Where a chunked body is.
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields (dropped) up to an empty line; bytes seen so far.
    Trailers(usize),
}

/// The body of an answer, read from the replica's connection as it is polled. The connection
/// goes back to the pool at its end (when it may be reused); dropped before, it is closed.
pub struct AnswerBody {
    conn: Option<Conn>,
    /// Where the connection goes back to, if it may be reused.
    slot: Option<Arc<Slot>>,
    framing: Framing,
    /// Bytes of body passed on so far.
    passed: u64,
}

impl AnswerBody {
    fn is_done(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    /// The body has been read to its end.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(slot)) = (self.conn.take(), self.slot.take()) {
            // Bytes after the answer: not a connection to send the next call on.
            if conn.buf.is_empty() {
                slot.put(conn);
            }
        }
    }

    /// Ends the body with an error; the connection is closed.
    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    fn cut(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the replica closed the connection {what} (after {} bytes of the answer's body)",
                self.passed
            ),
        )
    }

    fn invalid(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("invalid chunked answer: {what}"),
        )
    }

    fn data(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.passed += data.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl hyper::body::Body for AnswerBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.is_done() {
                this.finish();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Bytes that are there are used first; a read only when they do not do.
            let filled = match &mut this.framing {
                Framing::Done | Framing::Length(0) => continue,
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if conn.buf.is_empty() {
                        Some(ready!(conn.poll_fill(cx)))
                    } else {
                        let take = (*left).min(conn.buf.len() as u64);
                        let data = conn.buf.split_to(take as usize).freeze();
                        *left -= take;
                        if let Framing::Chunked(state @ Chunk::Data(0)) = &mut this.framing {
                            *state = Chunk::DataEnd;
                        }
                        let frame = this.data(data);
                        if matches!(this.framing, Framing::Length(0)) {
                            this.finish();
                        }
                        return frame;
                    }
                }
                Framing::Close => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                // The end of the body; the connection ends with it.
                                this.slot = None;
                                this.finish();
                                return Poll::Ready(None);
                            }
                            Ok(_) => None,
                            Err(e) => return this.fail(e),
                        }
                    } else {
                        let data = conn.buf.split().freeze();
                        return this.data(data);
                    }
                }
                Framing::Chunked(state @ Chunk::Size) => {
                    match conn.buf.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            let line = conn.buf[..end].trim_ascii();
                            let digits = line
                                .split(|&b| b == b';')
                                .next()
                                .unwrap_or_default()
                                .trim_ascii();
                            let size = std::str::from_utf8(digits)
                                .ok()
                                .and_then(|d| u64::from_str_radix(d, 16).ok())
                                .filter(|_| !digits.is_empty() && digits.len() <= 16);
                            let Some(size) = size else {
                                return this.fail(Self::invalid("a bad chunk size"));
                            };
                            conn.buf.advance(end + 1);
                            *state = if size == 0 {
                                Chunk::Trailers(0)
                            } else {
                                Chunk::Data(size)
                            };
                            None
                        }
                        None if conn.buf.len() > MAX_CHUNK_LINE => {
                            return this.fail(Self::invalid("a chunk-size line too long"))
                        }
                        None => Some(ready!(conn.poll_fill(cx))),
                    }
                }
                Framing::Chunked(state @ Chunk::DataEnd) => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        *state = Chunk::Size;
                        None
                    } else if conn.buf.starts_with(b"\n") {
                        conn.buf.advance(1);
                        *state = Chunk::Size;
                        None
                    } else if conn.buf.len() >= 2 || conn.buf.first().is_some_and(|&b| b != b'\r') {
                        return this.fail(Self::invalid("no CRLF after a chunk's data"));
                    } else {
                        Some(ready!(conn.poll_fill(cx)))
                    }
                }
                Framing::Chunked(Chunk::Trailers(seen)) => {
                    match conn.buf.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            let empty = conn.buf[..end].trim_ascii().is_empty();
                            conn.buf.advance(end + 1);
                            *seen += end + 1;
                            if empty {
                                this.finish();
                                return Poll::Ready(None);
                            }
                            if *seen > MAX_HEAD {
                                return this.fail(Self::invalid("trailer fields too long"));
                            }
                            None
                        }
                        None if *seen + conn.buf.len() > MAX_HEAD => {
                            return this.fail(Self::invalid("trailer fields too long"))
                        }
                        None => Some(ready!(conn.poll_fill(cx))),
                    }
                }
            };
            match filled {
                None | Some(Ok(1..)) => {}
                Some(Ok(0)) => {
                    let e = this.cut(match this.framing {
                        Framing::Length(_) => "before the end of the answer's body",
                        _ => "before the end of the chunked answer",
                    });
                    return this.fail(e);
                }
                Some(Err(e)) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A new connection to `endpoint`.
async fn connect(endpoint: &Endpoint) -> Result<Conn, SendError> {
    let io = match endpoint {
        Endpoint::Unix(path) => ReplicaStream::Unix(
            UnixStream::connect(path)
                .await
                .map_err(SendError::Connect)?,
        ),
        Endpoint::Tcp(addr) => {
            let tcp = TcpStream::connect(addr).await.map_err(SendError::Connect)?;
            tcp.set_nodelay(true).map_err(SendError::Connect)?;
            ReplicaStream::Tcp(tcp)
        }
    };
    Ok(Conn {
        io,
        buf: BytesMut::with_capacity(READ_SIZE),
    })
}

/// The `Host` a replica is called with: `u<hex of socket path>` or `host:port` (what the
/// gateway has always sent).
pub fn authority(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Unix(path) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let bytes = path.as_os_str().as_encoded_bytes();
            let mut s = String::with_capacity(1 + bytes.len() * 2);
            s.push('u');
            for b in bytes {
                s.push(char::from(HEX[usize::from(b >> 4)]));
                s.push(char::from(HEX[usize::from(b & 15)]));
            }
            s
        }
        Endpoint::Tcp(addr) => addr.to_string(),
    }
}

pub enum ReplicaStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl ReplicaStream {
    /// Nothing to read without waiting: neither bytes nor the replica's close. Costs no
    /// system call while the socket has not become readable since its last read.
    fn quiet(&self) -> bool {
        let mut byte = [0u8; 1];
        let read = match self {
            ReplicaStream::Unix(s) => s.try_read(&mut byte),
            ReplicaStream::Tcp(s) => s.try_read(&mut byte),
        };
        matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for ReplicaStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReplicaStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ReplicaStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ReplicaStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ReplicaStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ReplicaStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReplicaStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ReplicaStream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReplicaStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ReplicaStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
