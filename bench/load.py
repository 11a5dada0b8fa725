#!/usr/bin/python3
"""Open-loop load at a fixed rate, and the cgroup readings around it (bench/isolation.sh).
Standard library only.

    load.py run URL OUT.json [--cgroup DIR]...   # knobs from the environment, see below
    load.py find-cgroups FUNCTION SKYFRI_PID    # prints "cpu DIR" and "cpuacct DIR" lines
    load.py report ALONE.json BESIDE.json       # the markdown rows and the verdict

`run` sends GET URL at BENCH_RATE requests per second for BENCH_WARMUP (not measured) plus
BENCH_SECONDS, over BENCH_CONNECTIONS keep-alive connections (TCP_NODELAY, one thread each,
HTTP/1.1, one request in flight per connection). Request k is due at start + k / rate,
whatever happened to the earlier ones (open loop). The first connection that is free takes
the next due request: it sleeps until the due time and sends it, or, when every connection
was busy past it, sends it as soon as its previous answer is in. A request's latency is
measured from its DUE time to the last byte of its answer, so a stall delays every request
due during it and shows in the percentiles (no coordinated omission, as in wrk2).

The generator checks itself: for every request sent on a connection that was free before its
due time, "lag" is the actual send time minus the due time (oversleeping, the GIL, the host's
scheduler); a send is "late" when lag > 1 ms. Requests that waited for a busy connection are
counted as "queued" (their wait is in their latency, it is the server's doing). Requests not
sent by the end of the run plus 30 s are "dropped". The achieved rate is measured requests
over the measured window's actual span.

Each --cgroup DIR is read just before and just after the measured window (not the warm-up):
cpu.stat (every counter: nr_periods, nr_throttled, throttled_time in v1, usage_usec,
nr_throttled, throttled_usec in v2), cpuacct.usage (v1, ns) and cpu.cfs_quota_us /
cpu.cfs_period_us or cpu.max; the deltas go to OUT.json.
"""

import ctypes
import json
import math
import os
import socket
import sys
import threading
import time
import urllib.parse


def knob(name, default, lo, hi):
    raw = os.environ.get(name, "") or str(default)
    try:
        v = int(raw)
    except ValueError:
        sys.exit(f"load.py: {name} must be a whole number (got {raw!r})")
    if not lo <= v <= hi:
        sys.exit(f"load.py: {name} must be {lo}..{hi} (got {v})")
    return v


LATE_NS = 1_000_000     # a send more than 1 ms after its due time on a free connection is late
DRAIN_S = 30.0          # after the last due time: how long in-flight and queued requests get
CALL_TIMEOUT_S = 30.0   # one request's answer
BUDGET_RATIO = 1.5      # DESIGN: B's p99 beside A within 1.5x of alone


def tight_timer():
    """prctl(PR_SET_TIMERSLACK, 1) for the calling thread: sleeps end within ~1 ns of their
    deadline instead of the default 50 µs (best effort; Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def pct(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


# ---------------------------------------------------------------- HTTP/1.1 on a raw socket


def read_response(sock, buf):
    """Reads one response from SOCK (BUF: bytes already received). Returns (status, body,
    leftover). Raises OSError on EOF before the response is complete."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        buf += chunk
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    rest = buf[end + 4:]
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed in the response body")
            rest += chunk
        return status, bytes(rest[:n]), rest[n:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = bytearray(), 0
        while True:
            nl = rest.find(b"\r\n", pos)
            if nl >= 0:
                size = int(bytes(rest[pos:nl]).split(b";")[0], 16)
                if size == 0:
                    # The terminating chunk and (no trailers) its CRLF.
                    while len(rest) < nl + 4:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionError("connection closed in the last chunk")
                        rest += chunk
                    return status, bytes(body), rest[nl + 4:]
                if len(rest) >= nl + 2 + size + 2:
                    body += rest[nl + 2:nl + 2 + size]
                    pos = nl + 2 + size + 2
                    continue
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed in a chunk")
            rest += chunk
    raise ConnectionError("response without Content-Length or chunked body (cannot keep alive)")


# ---------------------------------------------------------------- cgroup readings


def read_cgroup(d):
    out = {}
    for name in ("cpu.stat",):
        try:
            with open(os.path.join(d, name)) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if v.strip().lstrip("-").isdigit():
                        out[f"cpu.stat:{k}"] = int(v)
        except OSError:
            pass
    for name in ("cpuacct.usage", "cpu.cfs_quota_us", "cpu.cfs_period_us"):
        try:
            with open(os.path.join(d, name)) as f:
                out[name] = int(f.read().strip())
        except (OSError, ValueError):
            pass
    try:
        with open(os.path.join(d, "cpu.max")) as f:
            quota, period = f.read().split()
            out["cpu.max:period"] = int(period)
            if quota != "max":
                out["cpu.max:quota"] = int(quota)
    except (OSError, ValueError):
        pass
    return out


def cgroup_delta(before, after):
    keep = ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max:quota", "cpu.max:period")
    return {k: (after[k] if k in keep else after[k] - before[k]) for k in after if k in before}


# ---------------------------------------------------------------- run


def run(url, out_path, cgroups):
    rate = knob("BENCH_RATE", 200, 1, 100000)
    seconds = knob("BENCH_SECONDS", 10, 1, 600)
    warmup = knob("BENCH_WARMUP", 2, 0, 600)
    conns = knob("BENCH_CONNECTIONS", 4, 1, 1000)
    u = urllib.parse.urlsplit(url)
    host, port, path = u.hostname, u.port or 80, (u.path or "/") + (f"?{u.query}" if u.query else "")
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()

    interval_ns = 1e9 / rate
    n_warm = round(rate * warmup)
    n_total = n_warm + round(rate * seconds)
    lock = threading.Lock()
    state = {"next": 0}
    # Per request k (measured ones only, k >= n_warm): filled by the worker that sent it.
    sent_ns = [0] * n_total
    latency_ns = [None] * n_total
    lag_ns = []          # lag of each send on a connection that was free before the due time
    queued = [0]
    errors = {}
    statuses = {}
    reconnects = [0]

    def connect():
        s = socket.create_connection((host, port), timeout=CALL_TIMEOUT_S)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    socks = [connect() for _ in range(conns)]
    start = time.perf_counter_ns() + 100_000_000  # all threads started well before request 0
    hard_end = start + n_total * interval_ns + DRAIN_S * 1e9
    cg_before, cg_after = {}, {}
    window = {}

    def snapshot(into, key):
        into.update({d: read_cgroup(d) for d in cgroups})
        window[key] = time.perf_counter_ns()

    def error(kind):
        with lock:
            errors[kind] = errors.get(kind, 0) + 1

    def worker(i):
        tight_timer()
        s, buf = socks[i], bytearray()
        while True:
            with lock:
                k = state["next"]
                if k >= n_total:
                    return
                state["next"] = k + 1
            due = start + k * interval_ns
            now = time.perf_counter_ns()
            if now >= hard_end:
                return  # the rest are dropped
            free_before_due = now < due
            if free_before_due:
                time.sleep((due - now) / 1e9)
            t_send = time.perf_counter_ns()
            sent_ns[k] = t_send
            if k >= n_warm:
                if free_before_due:
                    with lock:
                        lag_ns.append(t_send - due)
                else:
                    with lock:
                        queued[0] += 1
            try:
                if s is None:
                    s, buf = connect(), bytearray()
                    with lock:
                        reconnects[0] += 1
                s.sendall(req)
                status, _body, buf = read_response(s, buf)
            except (OSError, ValueError, IndexError) as e:
                if k >= n_warm:
                    error(type(e).__name__)
                try:
                    if s is not None:
                        s.close()
                except OSError:
                    pass
                s = None
                continue
            t_done = time.perf_counter_ns()
            if k >= n_warm:
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latency_ns[k] = t_done - due
                else:
                    error(f"HTTP {status}")

    def cgroup_timer():
        # The cgroup readings at the measured window's due times, off the workers' path.
        for at, into, key in ((start + n_warm * interval_ns, cg_before, "start"),
                              (start + n_total * interval_ns, cg_after, "end")):
            wait = (at - time.perf_counter_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
            snapshot(into, key)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    timer = threading.Thread(target=cgroup_timer, daemon=True)
    timer.start()
    for t in threads:
        t.start()
    deadline = time.monotonic() + (hard_end - time.perf_counter_ns()) / 1e9 + CALL_TIMEOUT_S + 5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    timer.join(max(0.0, deadline - time.monotonic()))
    for s in socks:
        try:
            if s is not None:
                s.close()
        except OSError:
            pass

    measured = range(n_warm, n_total)
    lat = [latency_ns[k] for k in measured if latency_ns[k] is not None]
    sends = [sent_ns[k] for k in measured if sent_ns[k]]
    dropped = sum(1 for k in measured if not sent_ns[k])
    unanswered = len(measured) - len(lat) - dropped - sum(errors.values())
    span_ns = (max(sends) - min(sends)) if len(sends) > 1 else 0
    lags = lag_ns
    wall_s = (window.get("end", 0) - window.get("start", 0)) / 1e9
    res = {
        "rate": rate,
        "seconds": seconds,
        "warmup": warmup,
        "connections": conns,
        "scheduled": len(measured),
        "sent": len(sends),
        "answered_200": len(lat),
        "achieved_rate": (len(sends) - 1) / (span_ns / 1e9) if span_ns else 0.0,
        "dropped": dropped,
        "unanswered": max(0, unanswered),
        "errors": errors,
        "statuses": {str(k): v for k, v in statuses.items()},
        "reconnects": reconnects[0],
        "queued": queued[0],
        "late_sends": sum(1 for l in lags if l > LATE_NS),
        "lag_p50_us": pct(lags, 50) / 1e3 if lags else None,
        "lag_p99_us": pct(lags, 99) / 1e3 if lags else None,
        "lag_max_us": max(lags) / 1e3 if lags else None,
        "p50_us": pct(lat, 50) / 1e3 if lat else None,
        "p90_us": pct(lat, 90) / 1e3 if lat else None,
        "p99_us": pct(lat, 99) / 1e3 if lat else None,
        "p999_us": pct(lat, 99.9) / 1e3 if lat else None,
        "max_us": max(lat) / 1e3 if lat else None,
        "window_s": wall_s,
        "cgroups": {d: cgroup_delta(cg_before.get(d, {}), cg_after.get(d, {})) for d in cgroups},
    }
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    print(
        f"load.py: {res['sent']}/{res['scheduled']} sent at {res['achieved_rate']:.1f} req/s "
        f"(target {rate}), p50 {fmt(res['p50_us'])} µs, p99 {fmt(res['p99_us'])} µs, "
        f"max {fmt(res['max_us'])} µs; errors {sum(errors.values())}, late sends {res['late_sends']}, "
        f"queued {res['queued']}, dropped {dropped}",
        flush=True,
    )
    return 0


def fmt(v, spec="{:.0f}"):
    return "n/a" if v is None else spec.format(v)


# ---------------------------------------------------------------- find-cgroups


def find_cgroups(function, skyfri_pid):
    """The cgroup directories of FUNCTION's replica(s) started by SKYFRI_PID: its processes'
    cgroup paths that end in /skyfri/FUNCTION-<id>. One "cpu DIR" line (v1 cpu controller or
    the v2 group), and "cpuacct-root DIR" when v1's cpuacct hierarchy does not separate it."""
    children = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    todo, desc = [skyfri_pid], []
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            desc.append(c)
            todo.append(c)
    found = set()
    for pid in desc:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            _, controllers, path = line.split(":", 2)
            leaf = path.rsplit("/", 1)[-1]
            if "/skyfri/" not in path or not leaf.startswith(function + "-"):
                continue
            ctl = controllers.split(",")
            if controllers == "":
                found.add(("cpu", "/sys/fs/cgroup" + path))
            elif "cpu" in ctl:
                found.add(("cpu", f"/sys/fs/cgroup/{controllers}" + path))
            if "cpuacct" in ctl:
                found.add(("cpuacct", f"/sys/fs/cgroup/{controllers}" + path))
    for kind, d in sorted(found):
        print(kind, d)
    return 0 if found else 1


# ---------------------------------------------------------------- report


def cpu_use(res, quota_note=True):
    """A's CPU use over the window, in cores, and the throttling, from its cgroup(s)."""
    usage_ns, stat, quota, period = None, {}, None, None
    for d, delta in res["cgroups"].items():
        if "cpuacct.usage" in delta:
            usage_ns = delta["cpuacct.usage"]
        if "cpu.stat:usage_usec" in delta:
            usage_ns = delta["cpu.stat:usage_usec"] * 1000
        if "cpu.stat:nr_periods" in delta:
            stat = delta
        quota = delta.get("cpu.cfs_quota_us", delta.get("cpu.max:quota", quota))
        period = delta.get("cpu.cfs_period_us", delta.get("cpu.max:period", period))
    cores = usage_ns / 1e9 / res["window_s"] if usage_ns is not None and res["window_s"] else None
    periods = stat.get("cpu.stat:nr_periods")
    throttled = stat.get("cpu.stat:nr_throttled")
    t_ns = stat.get("cpu.stat:throttled_time", (stat.get("cpu.stat:throttled_usec") or 0) * 1000)
    return cores, periods, throttled, t_ns, quota, period


def report(alone_path, beside_path, label_beside):
    with open(alone_path) as f:
        alone = json.load(f)
    with open(beside_path) as f:
        beside = json.load(f)
    r = alone
    lines = [
        f"| steady (B), open loop {r['rate']} req/s, {r['connections']} conns, {r['seconds']} s | "
        "sent / scheduled | achieved req/s | p50 (µs) | p99 (µs) | max (µs) | errors | late sends / queued | A's CPU (cores) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, x in (("alone", alone), (label_beside, beside)):
        cores = cpu_use(x)[0]
        errs = sum(x["errors"].values()) + x["unanswered"]
        lines.append(
            f"| {label} | {x['sent']} / {x['scheduled']} | {x['achieved_rate']:.1f} | {fmt(x['p50_us'])} | "
            f"{fmt(x['p99_us'])} | {fmt(x['max_us'])} | {errs} | {x['late_sends']} / {x['queued']} | "
            f"{fmt(cores, '{:.2f}')} |"
        )
    ratio = beside["p99_us"] / alone["p99_us"] if alone["p99_us"] and beside["p99_us"] else None
    ok = ratio is not None and ratio <= BUDGET_RATIO
    lines += [
        "",
        f"- noisy neighbour at a fixed rate: B's p99 beside / alone = **{fmt(ratio, '{:.2f}')}x** "
        f"(budget <= {BUDGET_RATIO}x): **{'PASS' if ok else 'FAIL'}**; p50 "
        f"{fmt(beside['p50_us'] / alone['p50_us'] if alone['p50_us'] and beside['p50_us'] else None, '{:.2f}')}x, "
        f"max {fmt(beside['max_us'] / alone['max_us'] if alone['max_us'] and beside['max_us'] else None, '{:.2f}')}x",
    ]
    cores, periods, throttled, t_ns, quota, period = cpu_use(beside)
    if periods:
        q = f"quota {quota / 1000:.1f} ms per {period / 1000:.0f} ms period, " if quota and period else ""
        lines.append(
            f"- A during B's window ({beside['window_s']:.1f} s): {fmt(cores, '{:.2f}')} cores "
            f"(cgroup CPU usage); {q}throttled in {throttled} of {periods} periods "
            f"({100.0 * throttled / periods:.0f} %), {t_ns / 1e9:.2f} s throttled"
        )
    for label, x in (("alone", alone), ("beside", beside)):
        lines.append(
            f"- generator {label}: lag of sends on a free connection p50 {fmt(x['lag_p50_us'])} / p99 "
            f"{fmt(x['lag_p99_us'])} / max {fmt(x['lag_max_us'])} µs; {x['late_sends']} late (> 1 ms), "
            f"{x['queued']} queued behind busy connections, {x['dropped']} dropped, "
            f"{x['reconnects']} reconnects" + (f", errors {x['errors']}" if x["errors"] else "")
        )
    print("\n".join(lines))
    return 0 if ok else 4


def main(argv):
    if len(argv) >= 3 and argv[0] == "run":
        cgroups, rest = [], argv[3:]
        while rest:
            if rest[0] != "--cgroup" or len(rest) < 2:
                sys.exit(__doc__)
            cgroups.append(rest[1])
            rest = rest[2:]
        return run(argv[1], argv[2], cgroups)
    if len(argv) == 3 and argv[0] == "find-cgroups":
        return find_cgroups(argv[1], int(argv[2]))
    if len(argv) in (3, 4) and argv[0] == "report":
        return report(argv[1], argv[2], argv[3] if len(argv) == 4 else "beside A")
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
