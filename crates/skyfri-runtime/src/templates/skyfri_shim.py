"""skyfri's Python shim: serves one function over HTTP/1.1 on the unix socket named by
SKYFRI_SOCKET. One file for three calling conventions (argv[1]):

  python3       OpenFaaS classic: handler.handle(body_str)
  python3-http  OpenFaaS python3-http: handler.handle(event, context) -> {statusCode, body, headers}
  exec          the classic watchdog: runs $fprocess per request, body on stdin

The HTTP code is hand-written on the raw socket because http.server costs several times more
per request; the gateway always sends Content-Length and keeps connections alive.
"""

import _thread
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

MODE = sys.argv[1] if len(sys.argv) > 1 else "python3"
MAX_LINE = 65536
HEALTH_PATH = "/_/health"
SPECIALISE_PATH = "/_/specialise"
CELL = False
# The function's exec timeout: the gateway answers 504 when it passes; the exec template also
# kills the process it started, as the classic watchdog does.
TIMEOUT = float(os.getenv("SKYFRI_TIMEOUT_SECONDS") or "60")


def canonical(name):
    # Go's canonical header form, which the OpenFaaS templates and watchdog expose.
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class Headers(dict):
    """Case-insensitive header dict (keys stored in canonical form), like flask's."""

    def __getitem__(self, key):
        return dict.__getitem__(self, canonical(key))

    def __contains__(self, key):
        return dict.__contains__(self, canonical(key))

    def get(self, key, default=None):
        return dict.get(self, canonical(key), default)


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive")


class Event:
    """The python3-http template's event."""

    def __init__(self, req):
        self.body = req.body
        self.headers = req.headers
        self.method = req.method
        query = {}
        for k, v in parse_qsl(req.query, keep_blank_values=True):
            query.setdefault(k, v)
        self.query = query
        self.path = req.path


class Context:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


class BadRequest(Exception):
    pass


def read_chunked(rfile):
    # The gateway never sends chunked bodies, but other clients (curl in tests) might.
    body = bytearray()
    while True:
        size = int(rfile.readline(MAX_LINE).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body += rfile.read(size)
        rfile.readline(MAX_LINE)


def read_request(rfile):
    line = rfile.readline(MAX_LINE)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(MAX_LINE)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    req = Request()
    req.method, target, version = parts
    path, _, req.query = target.partition("?")
    req.path = unquote(path) or "/"
    req.keep_alive = version == "HTTP/1.1"
    headers = Headers()
    length = 0
    chunked = False
    while True:
        line = rfile.readline(MAX_LINE)
        if line in (b"\r\n", b"\n", b""):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest("malformed header")
        name = canonical(name.strip())
        value = value.strip()
        if name == "Content-Length":
            length = int(value)
        elif name == "Transfer-Encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "Connection":
            v = value.lower()
            req.keep_alive = v != "close" if version == "HTTP/1.1" else v == "keep-alive"
        if name in headers:
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value
    req.headers = headers
    req.body = read_chunked(rfile) if chunked else (rfile.read(length) if length else b"")
    return req


def encode_response(status, headers, body, keep_alive, method="POST"):
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    # These answers have no body on the wire; sending one would corrupt the kept-alive
    # connection for the next request.
    bodiless = method == "HEAD" or status < 200 or status in (204, 304)
    out = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
    for k, v in headers.items():
        if k.lower() not in ("content-length", "connection", "transfer-encoding"):
            out.append("%s: %s\r\n" % (k, v))
    if status != 204 and status >= 200:
        out.append("Content-Length: %d\r\n" % len(body))
    out.append("Connection: %s\r\n\r\n" % ("keep-alive" if keep_alive else "close"))
    head = "".join(out).encode("latin-1")
    return head if bodiless else head + body


def encode_or_500(status, headers, body, req):
    try:
        return encode_response(status, headers, body, req.keep_alive, req.method)
    except (UnicodeError, TypeError, ValueError) as e:  # e.g. a header value that is not latin-1
        traceback.print_exc()
        sys.stderr.flush()
        msg = "skyfri: the function's response could not be encoded: %s" % e
        return encode_response(500, {"Content-Type": "text/plain; charset=utf-8"}, msg, req.keep_alive)


def body_of(value):
    """Turns a handler's return value into (body bytes, default content type)."""
    if value is None:
        return b"", None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), "application/octet-stream"
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode("utf-8"), "application/json"
    return str(value).encode("utf-8"), "text/plain; charset=utf-8"


def has_header(headers, name):
    name = name.lower()
    return any(k.lower() == name for k in headers)


def call_python3(req):
    result = HANDLE(req.body.decode("utf-8", "replace"))
    body, ctype = body_of(result)
    headers = {}
    configured = os.getenv("content_type")
    if configured or ctype:
        headers["Content-Type"] = configured or ctype
    return 200, headers, body


def call_python3_http(req):
    res = HANDLE(Event(req), Context())
    if not isinstance(res, dict):
        body, ctype = body_of(res)
        return 200, ({"Content-Type": ctype} if ctype else {}), body
    status = int(res.get("statusCode", 200))
    headers = dict(res.get("headers") or {})
    body, ctype = body_of(res.get("body"))
    if ctype and not has_header(headers, "Content-Type"):
        headers["Content-Type"] = ctype
    return status, headers, body


def call_exec(req):
    env = dict(os.environ)
    env["Http_Method"] = req.method
    env["Http_Path"] = req.path
    env["Http_Query"] = req.query
    env["Http_ContentLength"] = str(len(req.body))
    for k, v in req.headers.items():
        env["Http_" + k.replace("-", "_")] = v
    proc = subprocess.Popen(
        ["/bin/sh", "-c", FPROCESS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(req.body, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        sys.stderr.write("skyfri: fprocess killed after the exec timeout of %gs\n" % TIMEOUT)
        sys.stderr.flush()
        return 504, {"Content-Type": "text/plain; charset=utf-8"}, b"exec timeout"
    if stderr:
        # The classic watchdog logs what the process wrote to stderr; so do we.
        sys.stderr.write(stderr.decode("utf-8", "replace"))
        sys.stderr.flush()
    headers = {}
    ctype = os.getenv("content_type") or req.headers.get("Content-Type")
    if ctype:
        headers["Content-Type"] = ctype
    if proc.returncode != 0:
        msg = stderr or ("exit status %d" % proc.returncode).encode()
        return 500, {"Content-Type": "text/plain; charset=utf-8"}, msg
    return 200, headers, stdout


# Stopping (scale-down, redeploy, removal send SIGTERM): no new connections, the calls in
# flight finish (within the exec timeout), then the shim exits.
IN_FLIGHT = 0
IDLE = threading.Condition()
DRAINING = False


def call_started():
    global IN_FLIGHT
    with IDLE:
        IN_FLIGHT += 1


def call_finished():
    global IN_FLIGHT
    with IDLE:
        IN_FLIGHT -= 1
        IDLE.notify_all()


def exit_when_idle():
    with IDLE:
        IDLE.wait_for(lambda: IN_FLIGHT == 0, TIMEOUT)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def on_sigterm(signum, frame):
    global DRAINING
    if DRAINING:
        return
    DRAINING = True
    # Without its path the socket takes no new connections; accepted ones are still served.
    try:
        os.unlink(os.environ["SKYFRI_SOCKET"])
    except (KeyError, OSError):
        pass
    # The main thread runs this handler: wait in another one.
    threading.Thread(target=exit_when_idle, daemon=True).start()


signal.signal(signal.SIGTERM, on_sigterm)


def serve(conn):
    rfile = conn.makefile("rb", buffering=65536)
    busy = False
    try:
        while True:
            try:
                req = read_request(rfile)
            except (BadRequest, ValueError) as e:
                conn.sendall(encode_response(400, {}, str(e), False))
                return
            if req is None:
                return
            call_started()
            busy = True
            if req.path == HEALTH_PATH:
                status, headers, body = 200, {}, b"OK"
            elif req.path == SPECIALISE_PATH:
                status, headers, body = specialise(req)
            else:
                try:
                    status, headers, body = CALL(req)
                except Exception as e:  # the handler's bug, reported to the caller and the log
                    traceback.print_exc()
                    sys.stderr.flush()
                    status, headers, body = 500, {"Content-Type": "text/plain; charset=utf-8"}, str(e)
            if DRAINING:
                req.keep_alive = False  # answered with Connection: close
            conn.sendall(encode_or_500(status, headers, body, req))
            busy = False
            call_finished()
            if not req.keep_alive:
                return
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        if busy:
            call_finished()
        try:
            rfile.close()
            conn.close()
        except OSError:
            pass


def load_handler():
    # Import once at start, so an import error surfaces at deploy time, not per request.
    sys.path.insert(0, os.getcwd())
    import handler

    return handler.handle


def add_packages():
    """Puts the packages `skyfri build` installed from requirements.txt (pip --target, into
    python_packages/ beside the function folder) on the path: after the standard library and
    before the system's site-packages, as a user site would be, with their .pth files read.
    The exec template's process gets them through PYTHONPATH."""
    packages = os.path.join(os.path.dirname(os.getcwd()), "python_packages")
    if not os.path.isdir(packages) or packages in sys.path:
        return
    import site

    before = list(sys.path)
    site.addsitedir(packages)
    added = [p for p in sys.path if p not in before]
    at = next(
        (i for i, p in enumerate(before) if p.endswith(("site-packages", "dist-packages"))),
        len(before),
    )
    sys.path[:] = before[:at] + added + before[at:]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (packages, os.environ.get("PYTHONPATH")) if p
    )


def not_specialised(req):
    return 503, {"Content-Type": "text/plain; charset=utf-8"}, b"stem cell: not specialised yet"


def setup():
    """Loads the function for MODE from the current directory and environment."""
    global HANDLE, CALL, FPROCESS, TIMEOUT
    TIMEOUT = float(os.getenv("SKYFRI_TIMEOUT_SECONDS") or "60")
    add_packages()
    if MODE == "exec":
        FPROCESS = os.getenv("fprocess")
        if not FPROCESS:
            sys.exit("skyfri: the exec template needs fprocess (env_process) to be set")
        CALL = call_exec
    else:
        HANDLE = load_handler()
        CALL = call_python3_http if MODE == "python3-http" else call_python3


def warm_up():
    """One-time costs a stem cell pays before a function is waiting. The first import from a
    directory costs about a millisecond of setup in importlib (path hooks, finders, the
    bytecode loader): paid on a throwaway module in the cell's private /tmp."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        with open(os.path.join(scratch, "_skyfri_warm_up.py"), "w") as f:
            f.write("def handle(req):\n    return req\n")
        sys.path.insert(0, scratch)
        try:
            __import__("_skyfri_warm_up")
        finally:
            sys.path.remove(scratch)
            sys.modules.pop("_skyfri_warm_up", None)
            sys.path_importer_cache.pop(scratch, None)
    # The specialisation's body is the first JSON the cell decodes: the decoder's first use
    # costs tens of µs more than the next ones.
    json.loads('{"mode": "python3", "env": {"A": "b"}}')
    # What the interpreter and the shim made so far lives as long as the replica: out of
    # the collector's way, so no collection walks it during a call.
    gc.collect()
    gc.freeze()


def specialise(req):
    """A stem cell becomes a replica: the function's environment, directory and handler.
    The body is JSON {"mode", "cwd", "env"}; a failure answers 500 with the traceback and
    leaves the cell unspecialised (skyfri then discards it)."""
    global MODE, CELL
    if not CELL:
        return 409, {}, b"already specialised"
    try:
        spec = json.loads(req.body)
        os.environ.clear()
        os.environ.update(spec["env"])
        os.chdir(spec["cwd"])
        MODE = spec["mode"]
        setup()
    except BaseException:  # SystemExit from setup too: the cell reports, skyfri decides
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
        return 500, {"Content-Type": "text/plain; charset=utf-8"}, text
    CELL = False
    return 200, {}, b"specialised"


def main():
    global CALL, CELL
    # A stem cell starts before it knows its function (SKYFRI_CELL=1): it serves only
    # health checks until skyfri sends it /_/specialise.
    CELL = os.getenv("SKYFRI_CELL") == "1"
    if CELL:
        CALL = not_specialised
        warm_up()
    else:
        setup()
    path = os.environ["SKYFRI_SOCKET"]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1024)
    while True:
        conn, _ = server.accept()
        if CELL:
            # A cell's only callers are skyfri's probes and its specialisation, one request
            # per connection: served here, without a thread to start and wake.
            serve(conn)
            continue
        # A bare thread: threading.Thread.start() waits until the new thread has run, a
        # scheduler round trip on the path of every new connection.
        _thread.start_new_thread(serve, (conn,))


if __name__ == "__main__":
    main()
