#!/usr/bin/python3
"""Measurements for bench/async.sh (standard library only).

    async.py e2e GATEWAY_URL FUNCTION CALLS CONNECTIONS OUT.json
    async.py nats NATS_URL MESSAGES OUT.json
    async.py report WORK_DIR

`e2e`: async end-to-end throughput. Runs a callback receiver on 127.0.0.1, sends a warm-up
of 50 calls and waits for their callbacks, then POSTs CALLS calls to
/async-function/FUNCTION over CONNECTIONS keep-alive connections (each with X-Call-Id and
X-Callback-Url) and times from the first POST to the last callback. Records the accept phase
(first POST to last 202), callbacks that are not 200, missing and duplicate callbacks.

`nats`: the raw JetStream publish-ack rate, the floor of a JetStream-backed queue. Speaks the
NATS text protocol directly (no client library): creates a file-backed stream
`SKYFRI_BENCH` on subject `skyfri-bench.calls`, publishes MESSAGES 1 KiB messages with up to
256 awaiting their ack, and deletes the stream.

`report`: reads the JSON files of WORK_DIR (enqueue-v4.json, enqueue-v7.json, accept.json,
e2e.json, and the optional jetstream-*.json / nats.json) and writes WORK_DIR/report.md and
WORK_DIR/verdict (PASS or FAIL against the budget).

Exit status: 0 when the measurement ran, 3 when the platform misbehaved (a POST not answered
202, callbacks missing after the wait).
"""

import asyncio
import json
import os
import sys
import time
import urllib.parse

ENQUEUE_BUDGET = 20000      # durable enqueues/s of the embedded queue (issue 5)
WARMUP = 50
CALLBACK_WAIT = 300.0       # seconds after the last 202 for the callbacks to arrive
WINDOW = 256                # JetStream publishes awaiting their ack


class Platform(Exception):
    """The platform did something that makes the run meaningless."""


# ---------------------------------------------------------------- HTTP over asyncio streams


async def read_message(reader):
    """One HTTP/1.1 message: (first line, {lower-case name: value}, body); None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


class Receiver:
    """Callbacks: keep-alive, records (X-Call-Id, X-Function-Status, arrival)."""

    def __init__(self):
        self.got = {}          # id -> [status, ...]
        self.last = 0.0
        self.changed = asyncio.Event()

    async def serve(self, reader, writer):
        while True:
            msg = await read_message(reader)
            if msg is None:
                break
            _, headers, _ = msg
            call = headers.get("x-call-id", "")
            self.got.setdefault(call, []).append(int(headers.get("x-function-status", "0")))
            self.last = time.perf_counter()
            self.changed.set()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async def wait_for(self, ids, timeout):
        deadline = time.perf_counter() + timeout
        while not all(i in self.got for i in ids):
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass
        return True


async def post_all(host, port, function, ids, connections, callback):
    """POSTs one async call per id over `connections` keep-alive connections; returns the
    time of the last 202. Raises Platform on any other answer."""
    queue = list(reversed(ids))
    last = [0.0]

    async def one_connection():
        reader, writer = await asyncio.open_connection(host, port)
        while queue:
            call = queue.pop()
            writer.write(
                (f"POST /async-function/{function} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 f"X-Call-Id: {call}\r\nX-Callback-Url: {callback}\r\n"
                 "Content-Length: 0\r\n\r\n").encode())
            msg = await read_message(reader)
            if msg is None:
                raise Platform(f"{call}: the gateway closed the connection")
            first, headers, body = msg
            if " 202 " not in first + " ":
                raise Platform(f"{call}: {first} {body[:200]!r}")
            if headers.get("x-call-id") != call:
                raise Platform(f"{call}: answered with X-Call-Id {headers.get('x-call-id')!r}")
            last[0] = time.perf_counter()
        writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return last[0]


async def e2e(url, function, calls, connections, out):
    u = urllib.parse.urlsplit(url)
    receiver = Receiver()
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    cb_port = server.sockets[0].getsockname()[1]
    callback = f"http://127.0.0.1:{cb_port}/done"
    run = f"{os.getpid()}-{int(time.time())}"

    warm = [f"warm-{run}-{i}" for i in range(WARMUP)]
    await post_all(u.hostname, u.port, function, warm, min(connections, WARMUP), callback)
    if not await receiver.wait_for(warm, 60):
        raise Platform("the warm-up calls did not call back within 60 s")

    ids = [f"e2e-{run}-{i:06d}" for i in range(calls)]
    started = time.perf_counter()
    accepted = await post_all(u.hostname, u.port, function, ids, connections, callback)
    complete = await receiver.wait_for(ids, CALLBACK_WAIT)
    done = receiver.last
    server.close()
    statuses = [receiver.got.get(i, []) for i in ids]
    result = {
        "calls": calls,
        "connections": connections,
        "accept_s": accepted - started,
        "complete_s": done - started,
        "missing": sum(1 for s in statuses if not s),
        "duplicates": sum(1 for s in statuses if len(s) > 1),
        "not_200": sum(1 for s in statuses if any(x != 200 for x in s)),
    }
    json.dump(result, open(out, "w"))
    if not complete:
        raise Platform(f"{result['missing']} of {calls} callbacks missing {CALLBACK_WAIT:.0f} s "
                       "after the last 202")


# ---------------------------------------------------------------- JetStream, raw protocol


async def nats(url, messages, out):
    u = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname or "127.0.0.1", u.port or 4222)
    info = await reader.readline()
    if not info.startswith(b"INFO "):
        raise Platform(f"not a NATS server: {info[:80]!r}")
    connect = {"verbose": False, "pedantic": False, "headers": False, "name": "skyfri-bench"}
    if u.username:
        connect.update(user=urllib.parse.unquote(u.username),
                       **{"pass": urllib.parse.unquote(u.password or "")})
    inbox = f"_INBOX.skyfri-bench.{os.getpid()}"
    writer.write(f"CONNECT {json.dumps(connect)}\r\nSUB {inbox}.* 1\r\nPING\r\n".encode())
    pending = {}

    async def read_loop():
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                parts = line.split()
                payload = await reader.readexactly(int(parts[-1]) + 2)
                fut = pending.pop(parts[1].decode(), None)
                if fut is not None and not fut.done():
                    fut.set_result(json.loads(payload[:-2] or b"{}"))
            elif line.startswith(b"-ERR"):
                raise Platform(f"NATS: {line.decode().strip()}")

    reading = asyncio.create_task(read_loop())
    seq = [0]

    def request(subject, payload):
        seq[0] += 1
        reply = f"{inbox}.{seq[0]}"
        fut = asyncio.get_running_loop().create_future()
        pending[reply] = fut
        writer.write(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
        return fut

    stream = "SKYFRI_BENCH"
    config = {"name": stream, "subjects": ["skyfri-bench.calls"], "storage": "file",
              "retention": "limits", "max_msgs": -1, "num_replicas": 1}
    created = await asyncio.wait_for(
        request(f"$JS.API.STREAM.CREATE.{stream}", json.dumps(config).encode()), 10)
    if "error" in created and created["error"].get("err_code") != 10058:  # exists already
        raise Platform(f"stream not created: {created['error']}")
    body = b"x" * 1024
    window = asyncio.Semaphore(WINDOW)
    failures = [0]

    async def publish():
        async with window:
            ack = await asyncio.wait_for(request("skyfri-bench.calls", body), 30)
            if "error" in ack or "seq" not in ack:
                failures[0] += 1

    started = time.perf_counter()
    await asyncio.gather(*(publish() for _ in range(messages)))
    elapsed = time.perf_counter() - started
    await asyncio.wait_for(request(f"$JS.API.STREAM.DELETE.{stream}", b""), 10)
    reading.cancel()
    writer.close()
    json.dump({"messages": messages, "seconds": elapsed, "failures": failures[0],
               "window": WINDOW}, open(out, "w"))


# ---------------------------------------------------------------- report


def load(work, name):
    path = os.path.join(work, name)
    return json.load(open(path)) if os.path.exists(path) else None


def report(work):
    rows, verdict = [], "PASS"
    for ids in ("v4", "v7"):
        r = load(work, f"enqueue-{ids}.json")
        if r is None:
            continue
        ok = r["rate"] >= ENQUEUE_BUDGET
        verdict = verdict if ok else "FAIL"
        rows.append((f"(a) embedded queue, raw: durable enqueues, {r['tasks']} tasks, {ids} ids",
                     f"{r['rate']:.0f} calls/s", f">= {ENQUEUE_BUDGET} calls/s",
                     "**PASS**" if ok else "**FAIL**", f"{r['calls']} calls, 1 KiB bodies"))
    for backend, prefix in (("embedded", ""), ("JetStream (skyfri up --queue nats://...)",
                                               "jetstream-")):
        a = load(work, f"{prefix}accept.json")
        e = load(work, f"{prefix}e2e.json")
        skipped = load(work, f"{prefix}skipped.json")
        if skipped:
            rows.append((f"(b)+(c) {backend}", "not run", "", "", skipped["why"]))
            continue
        if a:
            rows.append((f"(b) {backend}: POST /async-function accepted",
                         f"{a['rate']:.0f} calls/s", "", "",
                         f"wrk -c{a['connections']} {a['seconds']} s keep-alive, "
                         f"p50 {a['p50_us'] / 1000:.2f} ms, p99 {a['p99_us'] / 1000:.2f} ms, "
                         f"{a['errors']} errors"))
        if e:
            rate = e["calls"] / e["complete_s"] if e["complete_s"] > 0 else 0
            rows.append((f"(c) {backend}: end to end, first POST to last callback",
                         f"{rate:.0f} calls/s", "", "",
                         f"{e['calls']} calls in {e['complete_s']:.2f} s (accepted in "
                         f"{e['accept_s']:.2f} s) over {e['connections']} connections; "
                         f"missing {e['missing']}, not 200 {e['not_200']}, "
                         f"duplicates {e['duplicates']}"))
    n = load(work, "nats.json")
    nats_skipped = load(work, "nats-skipped.json")
    if n:
        rows.append(("(d) raw JetStream publish-ack rate", f"{n['messages'] / n['seconds']:.0f} msgs/s",
                     "", "", f"{n['messages']} x 1 KiB, file storage, {n['window']} awaiting ack, "
                     f"{n['failures']} failures"))
    elif nats_skipped:
        rows.append(("(d) raw JetStream publish-ack rate", "not run", "", "", nats_skipped["why"]))
    with open(os.path.join(work, "report.md"), "w") as f:
        f.write("| what | measured | budget | result | notes |\n")
        f.write("| --- | ---: | ---: | --- | --- |\n")
        for r in rows:
            f.write("| " + " | ".join(r) + " |\n")
    with open(os.path.join(work, "verdict"), "w") as f:
        f.write(verdict + "\n")


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    try:
        if mode == "e2e":
            asyncio.run(e2e(args[0], args[1], int(args[2]), int(args[3]), args[4]))
        elif mode == "nats":
            asyncio.run(nats(args[0], int(args[1]), args[2]))
        elif mode == "report":
            report(args[0])
        else:
            sys.exit(f"bench: unknown mode {mode!r}")
    except Platform as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
