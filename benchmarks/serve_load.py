"""Load test of `charrnn serve` on 127.0.0.1: N concurrent clients ask for samples for a fixed time.

    python benchmarks/serve_load.py -c checkpoints/demo [--clients 50] [--seconds 10] [--length 200]

Starts the server as its own process (--max-concurrent = clients, so that every client is
admitted and none is refused with 503), waits for /health, then runs the clients on one asyncio
loop: each sends POST /v1/sample with its own seed, waits for the reply, and sends the next,
until the time is up. Reports requests, errors (any status but 200, or a failed connection),
p50 / p99 latency, generated characters per second, and the server's resident memory (VmRSS)
before and after. Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def start_server(checkpoint: str, clients: int, threads: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "charrnn", "serve", "-c", checkpoint, "--port", "0"]
    command += ["--max-concurrent", str(clients), "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            # keep reading its log (a line per request), or a full pipe would stall the server
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, match.group(1)
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


async def client(http: httpx.AsyncClient, seed: int, length: int, until: float, results: list) -> None:
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            reply = await http.post("/v1/sample", json={"prime": "def ", "length": length, "seed": seed})
            ok = reply.status_code == 200
            chars = len(reply.json()["text"]) - len("def ") if ok else 0
        except httpx.HTTPError:
            ok, chars = False, 0
        results.append((ok, time.perf_counter() - started, chars))
        seed += 1000


async def load(url: str, clients: int, seconds: float, length: int) -> tuple[list, float]:
    results: list = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(*(client(http, k, length, until, results) for k in range(clients)))
        return results, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="the server's --threads (0: one per core)")
    args = parser.parse_args()
    proc, url = start_server(args.checkpoint, args.clients, args.threads)
    try:
        httpx.get(f"{url}/health", timeout=10).raise_for_status()
        before = rss_mib(proc.pid)
        results, elapsed = asyncio.run(load(url, args.clients, args.seconds, args.length))
        after = rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    latencies = sorted(t for ok, t, _ in results if ok)
    errors = sum(not ok for ok, _, _ in results)
    chars = sum(c for _, _, c in results)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    print(f"{args.clients} clients for {elapsed:.1f} s, {args.length} characters a request, server {url}")
    print(f"requests {len(results)}, errors {errors}")
    if latencies:
        print(f"latency p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    print(f"generated {chars:,} characters, {chars / elapsed:,.0f} chars/s")
    print(f"server RSS {before:.1f} MiB before, {after:.1f} MiB after")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
