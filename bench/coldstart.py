#!/usr/bin/python3
"""Measurements for bench/coldstart.sh (standard library only).

    coldstart.py GATEWAY_URL OUT_DIR

GATEWAY_URL is a running skyfri with the functions of coldstart.sh's stack deployed
(`cold-py`, `cold-node`, `burst`); the admin password is in SKYFRI_PASSWORD. Knobs come from
the environment (BENCH_COLD_SAMPLES, BENCH_REF_SAMPLES, BENCH_BURST, BENCH_BURST_MAX,
BENCH_BURST_SLEEP_MS, BENCH_NODE). Writes OUT_DIR/report.md (the markdown report),
OUT_DIR/samples.json (every timing, in ns) and OUT_DIR/verdict (PASS or FAIL). Exit status 0
when everything ran (budget met or not), 3 when the platform misbehaved (a function never
reached zero, a call failed outright, ...).

Timings use time.perf_counter_ns. A call is timed from the moment its request is written on
an already connected TCP socket (TCP_NODELAY) to the moment the first byte of the answer is
read: connecting is not part of it, everything the gateway does after accepting is.
"""

import base64
import collections
import http.client
import json
import math
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

# ---------------------------------------------------------------- knobs


def knob(name, default, lo=1, hi=100000):
    raw = os.environ.get(name, "") or str(default)
    try:
        v = int(raw)
    except ValueError:
        sys.exit(f"bench: {name} must be a whole number (got {raw!r})")
    if not lo <= v <= hi:
        sys.exit(f"bench: {name} must be {lo}..{hi} (got {v})")
    return v


COLD_SAMPLES = knob("BENCH_COLD_SAMPLES", 200, 1, 10000)
REF_SAMPLES = knob("BENCH_REF_SAMPLES", COLD_SAMPLES, 1, 10000)
BURST = knob("BENCH_BURST", 500, 1, 5000)
BURST_MAX = knob("BENCH_BURST_MAX", 20, 1, 1000)          # must match the stack's scale.max
BURST_SLEEP_MS = knob("BENCH_BURST_SLEEP_MS", 50, 1, 10000)  # must match the handler's sleep
COLD_CELLS = knob("BENCH_COLD_CELLS", 2, 1, 100)  # idle stem cells of the runtime to wait for
PYTHON = "/usr/bin/python3"
NODE = os.environ.get("BENCH_NODE") or "/usr/bin/node"

BUDGETS = {  # DESIGN's cold-start and burst budgets
    "py_p50_ms": 5.0,
    "py_p99_ms": 20.0,
    "node_p50_ms": 15.0,
    "burst_errors": 0,
}

CALL_TIMEOUT = 60.0        # one function call, cold or not
ADMIN_TIMEOUT = 10.0       # one admin API call
ZERO_TIMEOUT = 30.0        # scale to zero until availableReplicas == 0
CELLS_TIMEOUT = 10.0       # waiting for the stem-cell pool to be refilled
CELLS_FALLBACK = 0.3       # when /system/info reports no stem cells at all

# ---------------------------------------------------------------- helpers


class Platform(Exception):
    """The platform did something that makes the rest of the run meaningless."""


def pct(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    k = max(0, math.ceil(p / 100.0 * len(s)) - 1)
    return s[k]


def ms(ns):
    return ns / 1e6


class Gateway:
    def __init__(self, url, password):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.auth = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()

    # ---- admin API (http.client, one connection per call: simple and bounded)
    def admin(self, method, path, body=None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=ADMIN_TIMEOUT)
        try:
            headers = {"Authorization": self.auth}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            text = r.read()
            return r.status, text
        finally:
            c.close()

    def function(self, name):
        status, text = self.admin("GET", f"/system/function/{name}")
        if status != 200:
            raise Platform(f"GET /system/function/{name}: {status} {text[:200]!r}")
        return json.loads(text)

    def scale(self, name, replicas):
        status, text = self.admin(
            "POST", f"/system/scale-function/{name}", {"serviceName": name, "replicas": replicas}
        )
        if status not in (200, 202):
            raise Platform(f"scale {name} to {replicas}: {status} {text[:200]!r}")

    def to_zero(self, name):
        """Scale NAME to zero and wait until it has no ready replica."""
        self.scale(name, 0)
        deadline = time.monotonic() + ZERO_TIMEOUT
        while True:
            f = self.function(name)
            if f.get("availableReplicas", 0) == 0:
                return
            if time.monotonic() > deadline:
                raise Platform(f"{name} still has replicas {ZERO_TIMEOUT:.0f}s after scaling to zero: {f}")
            time.sleep(0.01)

    def stem_cells(self):
        """{runtime: idle cells}, or None when the platform reports none."""
        status, text = self.admin("GET", "/system/info")
        if status != 200:
            raise Platform(f"GET /system/info: {status} {text[:200]!r}")
        cells = json.loads(text).get("provider", {}).get("runtime", {}).get("stemCells")
        return cells if isinstance(cells, dict) else None

    def wait_cells(self, runtime, stats):
        """Until the pool has a cell of RUNTIME (bounded); STATS counts what happened."""
        deadline = time.monotonic() + CELLS_TIMEOUT
        while True:
            cells = self.stem_cells()
            if cells is None or runtime not in cells:
                stats["no stem-cell report"] += 1
                time.sleep(CELLS_FALLBACK)
                return
            if cells[runtime] >= COLD_CELLS:
                return
            if time.monotonic() > deadline:
                stats["stem-cell pool not refilled in time"] += 1
                return
            time.sleep(0.01)

    # ---- function calls (raw sockets)
    def connect(self):
        s = socket.create_connection((self.host, self.port), timeout=CALL_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def request_bytes(self, name):
        return (
            f"POST /function/{name} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode()

    def call(self, name):
        """One timed call: (ns to first byte, status, headers, body)."""
        s = self.connect()
        try:
            req = self.request_bytes(name)
            t0 = time.perf_counter_ns()
            s.sendall(req)
            first = s.recv(65536)
            t1 = time.perf_counter_ns()
            buf = bytearray(first)
            parsed = parse(buf, eof=not first)
            while parsed is None:
                chunk = s.recv(65536)
                buf += chunk
                parsed = parse(buf, eof=not chunk)
        finally:
            s.close()
        status, headers, body = parsed
        return t1 - t0, status, headers, body


def parse(buf, eof):
    """A complete HTTP/1.1 response in BUF: (status, {lower-case name: value}, body), None
    when more is needed; on EOF whatever is there (status 0 when not even a head)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return (0, {}, bytes(buf)) if eof else None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return (0, {}, bytes(buf))
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    rest = bytes(buf[end + 4:])
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(rest) >= n:
            return status, headers, rest[:n]
        return (status, headers, rest) if eof else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = bytearray(), 0
        while True:
            nl = rest.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(rest[pos:nl].split(b";")[0], 16)
            if size == 0:
                return status, headers, bytes(body)
            if len(rest) < nl + 2 + size + 2:
                break
            body += rest[nl + 2:nl + 2 + size]
            pos = nl + 2 + size + 2
        return (status, headers, bytes(body)) if eof else None
    return (status, headers, rest) if eof else None


# ---------------------------------------------------------------- 1. reference


def reference():
    out = {}
    for label, argv in (("python3 -c pass", [PYTHON, "-c", "pass"]), ("node -e 0", [NODE, "-e", "0"])):
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        times = []
        for _ in range(REF_SAMPLES):
            t0 = time.perf_counter_ns()
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=30)
            times.append(time.perf_counter_ns() - t0)
        out[label] = times
        print(f"bench: reference {label}: p50 {ms(pct(times, 50)):.2f} ms", flush=True)
    return out


# ---------------------------------------------------------------- 2. cold starts


def cold_starts(gw, name, runtime):
    cold, warm, not_cold, failures = [], [], 0, []
    stats = collections.Counter()
    for i in range(COLD_SAMPLES):
        gw.to_zero(name)
        if runtime is not None:  # None: a template without stem cells (lambda-python)
            gw.wait_cells(runtime, stats)
        # A replica may have come back between the two checks (it should not): note it.
        if gw.function(name).get("availableReplicas", 0) != 0:
            stats["replica back before the call"] += 1
        for kind in ("cold", "warm"):
            try:
                ns, status, headers, body = gw.call(name)
            except OSError as e:
                failures.append(f"{kind} #{i}: {e}")
                continue
            if status != 200 or body != b"ok":
                failures.append(f"{kind} #{i}: {status} {body[:200]!r}")
                continue
            marked = headers.get("x-skyfri-cold-start") == "true"
            if kind == "cold":
                if marked:
                    cold.append(ns)
                else:
                    # A replica came back before the call (the autoscaler, between the
                    # scale to zero and the call): a warm call, left out of the cold row.
                    not_cold += 1
            elif marked:
                # The replica was gone again (the autoscaler): not a warm sample.
                stats["warm call marked cold (left out of the warm row)"] += 1
            else:
                warm.append(ns)
        if (i + 1) % 50 == 0 or i + 1 == COLD_SAMPLES:
            p50 = f"{ms(pct(cold, 50)):.2f} ms" if cold else "n/a"
            print(f"bench: {name}: {i + 1}/{COLD_SAMPLES} samples, cold p50 {p50}", flush=True)
    return {"cold": cold, "warm": warm, "not_cold": not_cold, "failures": failures, "stats": dict(stats)}


# ---------------------------------------------------------------- 3. burst


def burst(gw, name):
    gw.to_zero(name)
    gw.wait_cells("python", collections.Counter())
    peak = {"ready": 0, "desired": 0, "polls": 0, "first_ready_ns": None, "peak_ns": None}
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                f = gw.function(name)
                at = time.perf_counter_ns() - t0
                ready = f.get("availableReplicas", 0)
                if ready > 0 and peak["first_ready_ns"] is None:
                    peak["first_ready_ns"] = at
                if ready > peak["ready"]:
                    peak["ready"], peak["peak_ns"] = ready, at
                peak["desired"] = max(peak["desired"], f.get("replicas", 0))
                peak["polls"] += 1
            except (OSError, Platform, ValueError):
                pass
            done.wait(0.1)

    # Every call gets its own connection, made before the clock starts.
    socks, socket_errors = [], collections.Counter()
    for _ in range(BURST):
        try:
            socks.append(gw.connect())
        except OSError as e:
            socket_errors[f"connect: {e}"] += 1
    req = gw.request_bytes(name)
    sel = selectors.DefaultSelector()
    bufs, ended, statuses, bodies = {}, {}, collections.Counter(), collections.Counter()
    watcher = threading.Thread(target=watch, daemon=True)
    wall = time.time()
    started_utc = time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}"
    t0 = time.perf_counter_ns()
    watcher.start()
    for s in socks:
        try:
            s.sendall(req)
        except OSError as e:
            socket_errors[f"send: {e}"] += 1
            s.close()
            continue
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = bytearray()
    deadline = time.monotonic() + CALL_TIMEOUT
    latencies = []

    def finish(s, parsed):
        now = time.perf_counter_ns()
        sel.unregister(s)
        s.close()
        status, _, body = parsed
        statuses[status] += 1
        if status != 200 or body != b"ok":
            bodies[(status, body[:160])] += 1
        latencies.append(now - t0)
        ended[s] = now

    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                socket_errors[f"recv: {e}"] += 1
                sel.unregister(s)
                s.close()
                continue
            bufs[s] += chunk
            parsed = parse(bufs[s], eof=not chunk)
            if parsed is not None:
                finish(s, parsed)
    timed_out = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    done.set()
    watcher.join(5)
    end = max(ended.values()) if ended else time.perf_counter_ns()
    ok = statuses.get(200, 0) - sum(n for (st, _), n in bodies.items() if st == 200)
    non200 = sum(n for st, n in statuses.items() if st != 200)
    return {
        "ok": ok,
        "non200": non200,
        "wrong_body": sum(n for (st, _), n in bodies.items() if st == 200),
        "socket_errors": sum(socket_errors.values()) + timed_out,
        "socket_detail": dict(socket_errors, **({"timeout (60 s)": timed_out} if timed_out else {})),
        "statuses": dict(statuses),
        "bodies": [(st, b.decode("utf-8", "replace"), n) for (st, b), n in bodies.most_common(5)],
        "completion_ns": end - t0,
        "latencies": latencies,
        "peak_ready": peak["ready"],
        "peak_desired": peak["desired"],
        "polls": peak["polls"],
        "first_ready_ns": peak["first_ready_ns"],
        "peak_ns": peak["peak_ns"],
        "started_utc": started_utc,
    }


# ---------------------------------------------------------------- report


def fmt_row(label, n, values, note=""):
    if not values:
        return f"| {label} | 0 | n/a | n/a | n/a | {note} |"
    return (
        f"| {label} | {len(values)} | {ms(pct(values, 50)):.2f} | {ms(pct(values, 99)):.2f} | "
        f"{ms(max(values)):.2f} | {note} |"
    )


def report(ref, py, node, b, lambda_py=None):
    lines = [
        f"Cold starts: {COLD_SAMPLES} samples per runtime; each: scale to 0, wait for availableReplicas 0 and",
        f"{COLD_CELLS} idle stem cell(s) of the runtime in the pool, then one `POST /function/NAME` on a fresh connection, timed from",
        "writing the request to the first byte of the answer; `warm` is the same call right after.",
        "",
        "| what | samples | p50 (ms) | p99 (ms) | max (ms) | notes |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, times in ref.items():
        lines.append(fmt_row(f"reference: `{label}` (process wall time)", REF_SAMPLES, times))
    measured = [("python3", py), ("node", node)] + ([("lambda-python", lambda_py)] if lambda_py else [])
    for label, r in measured:
        note = f"not marked cold: {r['not_cold']}; failed: {len(r['failures'])}"
        lines.append(fmt_row(f"skyfri {label} cold", COLD_SAMPLES, r["cold"], note))
        lines.append(fmt_row(f"skyfri {label} warm", COLD_SAMPLES, r["warm"]))
    ideal_s = math.ceil(BURST / BURST_MAX) * BURST_SLEEP_MS / 1000.0
    comp_s = b["completion_ns"] / 1e9
    errors = b["non200"] + b["socket_errors"] + b["wrong_body"]
    lines += [
        "",
        f"Burst: {BURST} concurrent calls (one connection each, connected first) to `burst` (python3, sleeps "
        f"{BURST_SLEEP_MS} ms, scale.max {BURST_MAX}) at zero.",
        "",
        "| burst | errors (non-200 / socket / wrong body) | completion (s) | ideal (s) | ratio | peak ready replicas | call p50 / p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {BURST} calls, max {BURST_MAX} replicas | {errors} ({b['non200']} / {b['socket_errors']} / {b['wrong_body']}) | "
        f"{comp_s:.3f} | {ideal_s:.3f} | {comp_s / ideal_s:.2f}x | {b['peak_ready']} | "
        + (f"{ms(pct(b['latencies'], 50)):.0f} / {ms(pct(b['latencies'], 99)):.0f} |" if b["latencies"] else "n/a |"),
    ]
    def at(ns):
        return "n/a" if ns is None else f"{ns / 1e9:.2f} s"

    lines += [
        "",
        f"Burst timeline (from the first request, /system/function polled every 100 ms, {b['polls']} polls; "
        f"started {b['started_utc']} UTC): first ready replica seen at {at(b['first_ready_ns'])}, "
        f"peak of {b['peak_ready']} ready at {at(b['peak_ns'])}; peak desired replicas {b['peak_desired']}.",
    ]
    if b["statuses"] and set(b["statuses"]) != {200}:
        lines.append("")
        lines.append(f"Burst statuses: {b['statuses']}; answers: " + "; ".join(
            f"{n}x {st} {body!r}" for st, body, n in b["bodies"]))
    if b["socket_detail"]:
        lines.append("")
        lines.append(f"Burst socket errors: {b['socket_detail']}")

    checks = []

    def check(label, value, limit, unit, fmt="{:.2f}"):
        ok = value is not None and value <= limit
        shown = "n/a" if value is None else fmt.format(value) + unit
        checks.append(ok)
        lines.append(f"| {label} | {shown} | <= {fmt.format(limit)}{unit} | **{'PASS' if ok else 'FAIL'}** |")

    lines += ["", "| budget (DESIGN) | measured | budget | result |", "| --- | ---: | ---: | --- |"]
    check("cold start python3 p50", ms(pct(py["cold"], 50)) if py["cold"] else None, BUDGETS["py_p50_ms"], " ms")
    check("cold start python3 p99", ms(pct(py["cold"], 99)) if py["cold"] else None, BUDGETS["py_p99_ms"], " ms")
    check("cold start node p50", ms(pct(node["cold"], 50)) if node["cold"] else None, BUDGETS["node_p50_ms"], " ms")
    check("burst errors", errors, BUDGETS["burst_errors"], "", "{:d}")

    notes = []
    for label, r in measured:
        if r["not_cold"]:
            notes.append(f"{label}: {r['not_cold']} of {len(r['cold']) + r['not_cold']} calls after scale-to-zero lacked `X-Skyfri-Cold-Start: true` (left out of the cold row)")
        for k, v in sorted(r["stats"].items()):
            notes.append(f"{label}: {k}: {v}")
        for f in r["failures"][:5]:
            notes.append(f"{label}: failed call {f}")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n", all(checks)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    url, out_dir = sys.argv[1], sys.argv[2]
    gw = Gateway(url, os.environ["SKYFRI_PASSWORD"])
    try:
        print(f"bench: reference: {REF_SAMPLES} runs each of python3 -c pass, node -e 0", flush=True)
        ref = reference()
        print(f"bench: cold starts: {COLD_SAMPLES} samples per runtime", flush=True)
        py = cold_starts(gw, "cold-py", "python")
        node = cold_starts(gw, "cold-node", "node")
        lambda_py = cold_starts(gw, "cold-lambda-py", None)
        print(f"bench: burst: {BURST} concurrent calls from zero", flush=True)
        b = burst(gw, "burst")
    except Platform as e:
        print(f"bench: {e}", file=sys.stderr)
        return 3
    text, ok = report(ref, py, node, b, lambda_py)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    # Every sample in ns, for pooling runs (bench/README.md: runs on a busy host).
    with open(os.path.join(out_dir, "samples.json"), "w") as f:
        json.dump({
            "reference": ref,
            "python3": {"cold": py["cold"], "warm": py["warm"]},
            "node": {"cold": node["cold"], "warm": node["warm"]},
        }, f)
    with open(os.path.join(out_dir, "verdict"), "w") as f:
        f.write("PASS\n" if ok else "FAIL\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
