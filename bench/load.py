#!/usr/bin/python3
"""Open-loop load at a fixed rate, and the cgroup readings around it (bench/isolation.sh).
Standard library only.

    load.py run URL OUT.json [--cgroup DIR]... [--tree PID]   # knobs: the environment, below
    load.py find-cgroups FUNCTION SKYFRI_PID    # prints "cpu DIR" and "cpuacct DIR" lines
    load.py report ALONE.json[,...] BESIDE.json[,...] [LABEL]   # exit 0 PASS, 4 FAIL

`report` pools the slices given (alone ones, beside ones: bench/isolation.sh alternates them,
so that the host's slow drifts touch both alike) and prints the markdown rows and the verdict.

`run` sends GET URL at BENCH_RATE requests per second for BENCH_WARMUP (not measured) plus
BENCH_SECONDS, over BENCH_CONNECTIONS keep-alive connections (TCP_NODELAY, one thread each,
HTTP/1.1, one request in flight per connection). Request k is due at start + k / rate,
whatever happened to the earlier ones (open loop). The first connection that is free takes
the next due request: it waits until the due time (a sleep, then a short time.sleep(0) loop;
timer slack 1 ns) and sends it, or, when every connection was busy past it, sends it as soon
as its previous answer is in. A request's latency is measured from its DUE time to the last
byte of its answer, so a stall delays every request due during it and shows in the
percentiles (no coordinated omission, as in wrk2). The latency from the actual send is kept
too, for comparison.

The generator checks itself: for every request sent on a connection that was free before its
due time, "lag" is the actual send time minus the due time (oversleeping, the GIL, the host's
scheduler); a send is "late" when lag > 1 ms. Requests that waited for a busy connection are
counted as "queued" (their wait is in their latency, it is the server's doing). Requests not
sent by the end of the run plus 30 s are "dropped". The achieved rate is measured requests
over the measured window's actual span.

Each --cgroup DIR is read just before and just after the measured window (not the warm-up):
cpu.stat (every counter: nr_periods, nr_throttled, throttled_time in v1, usage_usec,
nr_throttled, throttled_usec in v2), cpuacct.usage (v1, ns) and cpu.cfs_quota_us /
cpu.cfs_period_us or cpu.max; the deltas go to OUT.json. So is the host's CPU use over the
window: per process (/proc/PID/stat, own and reaped children's time), split into the tree of
--tree PID (skyfri and its replicas), this generator, and every other process ("others": work
on the host that is not the bench's, which shows in the latencies); and the host's busy and
steal time from /proc/stat (tick-sampled: a CPU-quota'd neighbour inflates "busy" by ~0.1 core).
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
NOISY_CORES = 0.1       # other work on the host above this during a window: warn


def tight_timer():
    """prctl(PR_SET_TIMERSLACK, 1) for the calling thread: sleeps end within ~1 ns of their
    deadline instead of the default 50 µs (best effort; Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


SPIN_NS = 200_000   # the last 200 µs before a due time are waited for in a loop, not a sleep


def wait_until(due_ns):
    """Returns at DUE_NS (perf_counter_ns) within a few µs: a sleep until 200 µs before it
    (waking from a sleep takes ~50-100 µs on a VM), then time.sleep(0) in a loop, which
    releases the GIL on every turn so the other workers can take their answers meanwhile."""
    rest = due_ns - time.perf_counter_ns()
    if rest > SPIN_NS:
        time.sleep((rest - SPIN_NS) / 1e9)
    while time.perf_counter_ns() < due_ns:
        time.sleep(0)


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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def read_host(tree_root):
    """CPU counters in clock ticks: the host's busy and steal time (/proc/stat, sampled at the
    tick), and every process's own plus reaped children's time (/proc/PID/stat, exact), marked
    when it is in TREE_ROOT's tree or is this process."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    steal = v[7] if len(v) > 7 else 0
    children, procs = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command: state ppid ... utime (11) stime (12) cutime (13) cstime (14)
        children.setdefault(int(fields[1]), []).append(int(pid))
        procs[int(pid)] = [sum(int(x) for x in fields[11:15]), "other"]
    todo = [tree_root] if tree_root else []
    while todo:
        p = todo.pop()
        if p in procs:
            procs[p][1] = "tree"
        todo.extend(children.get(p, []))
    if os.getpid() in procs:
        procs[os.getpid()][1] = "self"
    return {"busy": busy, "steal": steal, "procs": procs}


def host_delta(before, after, wall_s):
    """Cores used over the window by skyfri's tree, this generator and every other process
    (pids alive at both readings: the difference; pids born in between: all their time; time
    of processes reaped in between is in their parent's), and the host's busy and steal time."""
    if not before or not after or wall_s <= 0:
        return None
    per = CLK_TCK * wall_s
    use = {"tree": 0, "self": 0, "other": 0}
    for pid, (ticks, kind) in after["procs"].items():
        old = before["procs"].get(pid)
        use[kind] += ticks - (old[0] if old and old[1] == kind else 0)
    return {
        "host_busy": (after["busy"] - before["busy"]) / per,
        "steal": (after["steal"] - before["steal"]) / per,
        "bench_tree": use["tree"] / per,
        "generator": use["self"] / per,
        "others": max(0, use["other"]) / per,
    }


def cgroup_delta(before, after):
    keep = ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max:quota", "cpu.max:period")
    return {k: (after[k] if k in keep else after[k] - before[k]) for k in after if k in before}


# ---------------------------------------------------------------- run


def run(url, out_path, cgroups, tree_root=None):
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
    service_ns = [None] * n_total   # from the actual send: what the latency would be without the open loop
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
    window, host = {}, {}

    def snapshot(into, key):
        into.update({d: read_cgroup(d) for d in cgroups})
        window[key] = time.perf_counter_ns()
        host[key] = read_host(tree_root)

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
                wait_until(due)
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
                    service_ns[k] = t_done - t_send
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
    svc = [service_ns[k] for k in measured if service_ns[k] is not None]
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
        "from_send_p50_us": pct(svc, 50) / 1e3 if svc else None,
        "from_send_p99_us": pct(svc, 99) / 1e3 if svc else None,
        "window_s": wall_s,
        "span_s": span_ns / 1e9,
        "lat_us": [round(x / 1e3, 1) for x in lat],
        "svc_us": [round(x / 1e3, 1) for x in svc],
        "lag_us": [round(x / 1e3, 1) for x in lags],
        "cgroups": {d: cgroup_delta(cg_before.get(d, {}), cg_after.get(d, {})) for d in cgroups},
        "host": host_delta(host.get("start"), host.get("end"), wall_s),
    }
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    print(
        f"load.py: {res['sent']}/{res['scheduled']} sent at {res['achieved_rate']:.1f} req/s "
        f"(target {rate}), p50 {fmt(res['p50_us'])} µs, p99 {fmt(res['p99_us'])} µs, "
        f"max {fmt(res['max_us'])} µs; errors {sum(errors.values())}, late sends {res['late_sends']}, "
        f"queued {res['queued']}, dropped {dropped}"
        + (f"; other processes used {res['host']['others']:.2f} cores, steal {res['host']['steal']:.2f}"
           if res["host"] else ""),
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


def merge(paths):
    """One result from the slices in PATHS (alone or beside): counts summed, percentiles of the
    pooled samples, cgroup deltas summed, host CPU averaged over the windows."""
    parts = []
    for p in paths:
        with open(p) as f:
            parts.append(json.load(f))
    first = parts[0]
    m = {k: first[k] for k in ("rate", "warmup", "connections")}
    for k in ("seconds", "scheduled", "sent", "answered_200", "dropped", "unanswered", "reconnects",
              "queued", "late_sends", "window_s", "span_s"):
        m[k] = sum(x[k] for x in parts)
    m["slices"] = len(parts)
    m["slice_p99_us"] = [x["p99_us"] for x in parts]
    m["achieved_rate"] = sum(x["sent"] - 1 for x in parts) / m["span_s"] if m["span_s"] else 0.0
    for k in ("errors", "statuses"):
        m[k] = {}
        for x in parts:
            for kk, v in x[k].items():
                m[k][kk] = m[k].get(kk, 0) + v
    for k in ("lat_us", "svc_us", "lag_us"):
        m[k] = [v for x in parts for v in x[k]]
    lat, svc, lag = m["lat_us"], m["svc_us"], m["lag_us"]
    for name, values, p in (("p50_us", lat, 50), ("p90_us", lat, 90), ("p99_us", lat, 99),
                            ("p999_us", lat, 99.9), ("from_send_p50_us", svc, 50),
                            ("from_send_p99_us", svc, 99), ("lag_p50_us", lag, 50), ("lag_p99_us", lag, 99)):
        m[name] = pct(values, p) if values else None
    m["max_us"] = max(lat) if lat else None
    m["lag_max_us"] = max(lag) if lag else None
    keep = ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max:quota", "cpu.max:period")
    m["cgroups"] = {}
    for x in parts:
        for d, delta in x["cgroups"].items():
            acc = m["cgroups"].setdefault(d, {})
            for k, v in delta.items():
                acc[k] = v if k in keep else acc.get(k, 0) + v
    hosts = [(x["host"], x["window_s"]) for x in parts if x.get("host")]
    if hosts and sum(w for _, w in hosts) > 0:
        total = sum(w for _, w in hosts)
        m["host"] = {k: sum(h[k] * w for h, w in hosts) / total for k in hosts[0][0]}
        m["host_max"] = {k: max(h[k] for h, _ in hosts) for k in hosts[0][0]}
    else:
        m["host"] = m["host_max"] = None
    return m


def report(alone_paths, beside_paths, label_beside):
    alone, beside = merge(alone_paths), merge(beside_paths)
    r = alone
    lines = [
        f"| steady (B), open loop {r['rate']} req/s, {r['connections']} conns, "
        f"{r['seconds']} s in {r['slices']} slices | "
        "p50 (µs) | p99 (µs) | max (µs) | sent / scheduled (achieved req/s) | errors | "
        "late / queued / dropped sends | A's CPU (cores) | other work on the host (cores) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, x in (("alone", alone), (label_beside, beside)):
        cores = cpu_use(x)[0]
        errs = sum(x["errors"].values()) + x["unanswered"]
        h = x.get("host")
        lines.append(
            f"| {label} | {fmt(x['p50_us'])} | {fmt(x['p99_us'])} | {fmt(x['max_us'])} | "
            f"{x['sent']} / {x['scheduled']} ({x['achieved_rate']:.1f}) | {errs} | "
            f"{x['late_sends']} / {x['queued']} / {x['dropped']} | {fmt(cores, '{:.2f}')} | "
            f"{fmt(h['others'] if h else None, '{:.2f}')} |"
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
    a_send, b_send = alone.get("from_send_p99_us"), beside.get("from_send_p99_us")
    if a_send and b_send:
        r_send = b_send / a_send
        lines.append(
            f"- the same timed from each request's actual send (the generator's own wake-up lag left out; "
            f"queueing is in the queued count): p99 {fmt(a_send)} -> {fmt(b_send)} µs = **{r_send:.2f}x** "
            f"({'within' if r_send <= BUDGET_RATIO else 'over'} {BUDGET_RATIO}x)"
        )
    cores, periods, throttled, t_ns, quota, period = cpu_use(beside)
    if periods:
        q = f"quota {quota / 1000:.1f} ms per {period / 1000:.0f} ms period, " if quota and period else ""
        lines.append(
            f"- A during B's window ({beside['window_s']:.1f} s): {fmt(cores, '{:.2f}')} cores "
            f"(cgroup CPU usage); {q}throttled in {throttled} of {periods} periods "
            f"({100.0 * throttled / periods:.0f} %), {t_ns / 1e9:.2f} s throttled"
        )
    for label, x in (("alone", alone), ("beside", beside)):
        h = x.get("host")
        if h:
            lines.append(
                f"- CPU {label} (cores, per process): skyfri and its replicas {h['bench_tree']:.2f}, "
                f"generator {h['generator']:.2f}, other processes {h['others']:.2f}; host busy "
                f"{h['host_busy']:.2f} and steal {h['steal']:.2f} (/proc/stat, tick-sampled)"
            )
        lines.append(
            f"- generator {label}: lag of sends on a free connection p50 {fmt(x['lag_p50_us'])} / p99 "
            f"{fmt(x['lag_p99_us'])} / max {fmt(x['lag_max_us'])} µs; {x['late_sends']} late (> 1 ms), "
            f"{x['queued']} queued behind busy connections, {x['dropped']} dropped, "
            f"{x['reconnects']} reconnects" + (f", errors {x['errors']}" if x["errors"] else "")
            + f"; B timed from the actual send instead: p50 {fmt(x.get('from_send_p50_us'))} / p99 "
            f"{fmt(x.get('from_send_p99_us'))} µs"
        )
    lines.append(
        "- B's p99 per slice, in the order run (µs): alone "
        + " ".join(fmt(v) for v in alone["slice_p99_us"])
        + "; beside " + " ".join(fmt(v) for v in beside["slice_p99_us"])
    )
    noisy = [
        f"{what} {label} up to {x['host_max'][key]:.2f} cores"
        for what, key in (("other processes", "others"), ("steal", "steal"))
        for label, x in (("alone", alone), ("beside", beside))
        if x.get("host_max") and x["host_max"][key] > NOISY_CORES
    ]
    if noisy:
        lines.append(
            f"- **warning**: the host was not quiet in some slice ({'; '.join(noisy)}; more than "
            f"{NOISY_CORES} cores): the comparison is not clean, rerun on a quiet host"
        )
    print("\n".join(lines))
    return 0 if ok else 4


def main(argv):
    if len(argv) >= 3 and argv[0] == "run":
        cgroups, tree, rest = [], None, argv[3:]
        while rest:
            if rest[0] == "--cgroup" and len(rest) >= 2:
                cgroups.append(rest[1])
            elif rest[0] == "--tree" and len(rest) >= 2 and rest[1].isdigit():
                tree = int(rest[1])
            else:
                sys.exit(__doc__)
            rest = rest[2:]
        return run(argv[1], argv[2], cgroups, tree)
    if len(argv) == 3 and argv[0] == "find-cgroups":
        return find_cgroups(argv[1], int(argv[2]))
    if len(argv) in (3, 4) and argv[0] == "report":
        return report(argv[1].split(","), argv[2].split(","), argv[3] if len(argv) == 4 else "beside A")
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
