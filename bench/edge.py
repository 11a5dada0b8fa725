"""Drives bench/edge.sh: many held keep-alive connections and slowloris clients against a
running skyfri, while a few ordinary clients keep calling a function.

Usage: edge.py HOST PORT PATH WORKDIR (env: BENCH_HELD, BENCH_SLOW, BENCH_SECONDS, BENCH_CALLERS)

Phases, each measuring the ordinary callers (closed loop, BENCH_CALLERS keep-alive
connections, for BENCH_SECONDS): p50/p99 latency, calls/s, errors.
  1. alone;
  2. beside BENCH_HELD keep-alive connections, each opened with a request and then used again
     every 10 s (a client that keeps its pool warm; the gateway's header timeout, 15 s by
     default, closes connections idle for longer);
  3. beside those and BENCH_SLOW slowloris connections, each sending an unfinished request
     head one byte every 2 s: they must be cut off by the header timeout while the callers
     go on.
Writes report.md into WORKDIR.
"""

import asyncio
import os
import resource
import sys
import time

HOST, PORT, PATH, WORK = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
HELD = int(os.environ.get("BENCH_HELD", "10000"))
SLOW = int(os.environ.get("BENCH_SLOW", "1000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CALLERS = int(os.environ.get("BENCH_CALLERS", "8"))

CALL = f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nContent-Length: 2\r\n\r\nhi".encode()
PING = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


async def answer(reader):
    """Reads one HTTP/1.1 answer; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def caller(until, lat, errors):
    try:
        reader, writer = await asyncio.open_connection(HOST, PORT)
    except OSError:
        errors.append("connect")
        return
    while time.monotonic() < until:
        t = time.perf_counter_ns()
        try:
            writer.write(CALL)
            status = await answer(reader)
        except (OSError, asyncio.IncompleteReadError) as e:
            errors.append(type(e).__name__)
            return
        lat.append((time.perf_counter_ns() - t) / 1000)
        if status != 200:
            errors.append(str(status))
    writer.close()


async def measure(name, rows):
    lat, errors = [], []
    until = time.monotonic() + SECONDS
    await asyncio.gather(*(caller(until, lat, errors) for _ in range(CALLERS)))
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    rows.append((name, len(lat) / SECONDS, pct(0.5), pct(0.99), len(errors)))
    print(f"bench: {name}: {len(lat)} calls, p50 {pct(0.5):.0f} us, p99 {pct(0.99):.0f} us, "
          f"{len(errors)} errors {sorted(set(errors))[:5]}", flush=True)


class Held:
    """Keep-alive connections that are opened with a request and reused every 10 s."""

    def __init__(self):
        self.open = 0
        self.failed = 0
        self.lost = 0
        self.stop = False

    async def one(self):
        try:
            reader, writer = await asyncio.open_connection(HOST, PORT)
            writer.write(PING)
            if await answer(reader) != 200:
                raise OSError("not 200")
        except (OSError, asyncio.IncompleteReadError):
            self.failed += 1
            return
        self.open += 1
        try:
            while not self.stop:
                await asyncio.sleep(10)
                writer.write(PING)
                await answer(reader)
        except (OSError, asyncio.IncompleteReadError):
            self.lost += 1
            self.open -= 1
            return
        writer.close()

    async def start(self, n):
        tasks = []
        for i in range(0, n, 500):
            batch = [asyncio.create_task(self.one()) for _ in range(min(500, n - i))]
            tasks += batch
            await asyncio.sleep(0.2)
        deadline = time.monotonic() + 60
        while self.open + self.failed < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return tasks


class Slow:
    """Slowloris: an unfinished request head, one more byte every 2 s."""

    def __init__(self):
        self.cut = []  # seconds each lasted before the gateway closed it
        self.refused = 0

    async def one(self):
        try:
            reader, writer = await asyncio.open_connection(HOST, PORT)
        except OSError:
            self.refused += 1
            return
        start = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
        try:
            while time.monotonic() - start < 120:
                writer.write(b"a")
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1024), 2)
                except asyncio.TimeoutError:
                    continue
                break  # EOF, or an error answer: the gateway gave up on it
        except OSError:
            pass
        self.cut.append(time.monotonic() - start)
        writer.close()


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < HELD + SLOW + CALLERS + 100:
        sys.exit(f"bench: the open-file limit {hard} is too low for {HELD + SLOW} connections")
    rows = []
    await measure("alone", rows)

    held = Held()
    held_tasks = await held.start(HELD)
    print(f"bench: {held.open} held connections open ({held.failed} failed)", flush=True)
    await measure(f"beside {held.open} held keep-alive connections", rows)

    slow = Slow()
    slow_tasks = [asyncio.create_task(slow.one()) for _ in range(SLOW)]
    await asyncio.sleep(1)
    await measure(f"beside the held ones and {SLOW} slowloris clients", rows)
    await asyncio.wait(slow_tasks, timeout=150)
    cut = sorted(slow.cut)
    still_open = held.open
    held.stop = True
    for t in held_tasks + slow_tasks:
        t.cancel()

    with open(os.path.join(WORK, "report.md"), "w") as f:
        f.write("| ordinary callers (%d keep-alive, closed loop, %.0f s) | calls/s | p50 (us) | p99 (us) | errors |\n"
                % (CALLERS, SECONDS))
        f.write("| --- | ---: | ---: | ---: | ---: |\n")
        for name, rate, p50, p99, err in rows:
            f.write(f"| {name} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {err} |\n")
        f.write("\n")
        f.write(f"- held keep-alive connections: {HELD} asked, {held.open + held.lost} opened, "
                f"{held.failed} failed to open, {held.lost} closed by the gateway while in use, "
                f"{still_open} still open at the end\n")
        if cut:
            f.write(f"- slowloris clients: {len(cut)} of {SLOW} cut off by the gateway "
                    f"(after {cut[0]:.1f}-{cut[-1]:.1f} s, median {cut[len(cut) // 2]:.1f} s), "
                    f"{slow.refused} refused at connect, "
                    f"{sum(1 for c in cut if c >= 119)} still open after 120 s\n")
        base_p99 = rows[0][3]
        for name, _, _, p99, _ in rows[1:]:
            f.write(f"- p99 {name} / alone: {p99 / base_p99:.2f}x\n")


asyncio.run(main())
