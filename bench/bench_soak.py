"""A soak of the serving process with slow clients mixed in, on loopback.

    python bench/bench_soak.py [--duration 60] [--baseline 15] [--good 8] [--slow 200]

One scikit-learn model is trained the way the pipeline does it (bench_serving's
model), served by `python -m cauce.serving` with request logging on and the default
limits (docs/serving.md: 10 s for headers, 10 s for a body, 64 bodies buffered at once,
1.5 MB a body). Then, each phase in its own client processes:

* baseline  `--good` keep-alive clients (default 8), each sending one-instance
            requests back to back, for `--baseline` seconds;
* soak      the same good clients for `--duration` seconds (default 60) while `--slow`
            connections (default 200) misbehave the whole time: half are slow
            uploaders (headers announcing a 1.5 MB body, 64 KiB sent at once, then a
            byte a second), half send their headers a line every 2 s; each reconnects
            as soon as the server cuts it off, so the pressure lasts the whole soak.

It prints, per phase, the good clients' requests/s, p50/p99/max latency and errors;
the slow connections' outcomes (408, 503, closed without an answer); the server's
resident memory (start, peak, end, sampled every 0.5 s); and checks that the server
still answers afterwards and that its request log holds every answered request
(one line per 200). Everything is bounded: each client process stops at its
deadline and is killed 30 s after it.

Clients and server share the machine (on the 2-core development machine: 8 good
clients' threads, the slow clients' event loop and the server all compete for two
cores), so the baseline in the same run is what the soak compares against.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import post, start_ours, train_cauce_model  # noqa: E402

GOOD_CLIENTS = textwrap.dedent(
    """
    import http.client, json, sys, threading, time
    host, port, body, clients, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4]), float(sys.argv[5])
    latencies, errors, lock = [], [], threading.Lock()
    deadline = time.monotonic() + seconds

    def client():
        connection = None
        mine, failed = [], []
        while time.monotonic() < deadline:
            if connection is None:
                connection = http.client.HTTPConnection(host, port, timeout=15)
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failed.append(f"HTTP {response.status}")
                else:
                    mine.append(time.perf_counter() - start)
            except Exception as error:
                failed.append(type(error).__name__)
                connection.close()
                connection = None
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"latencies": latencies, "errors": errors, "seconds": seconds}))
    """
)

SLOW_CLIENTS = textwrap.dedent(
    """
    import asyncio, collections, json, sys, time
    host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    outcomes = collections.Counter()
    deadline = time.monotonic() + seconds
    UPLOAD_HEAD = (b"POST /predict HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
                   b"Content-Length: 1500000\\r\\n\\r\\n")

    async def answer(reader):
        try:
            line = await reader.readline()
        except (ConnectionError, OSError):
            return "reset"
        return line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"

    async def uploader():
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                outcomes["connect-failed"] += 1
                await asyncio.sleep(0.5)
                continue
            try:
                writer.write(UPLOAD_HEAD + b"[" * 65536)
                await writer.drain()
                reading = asyncio.ensure_future(answer(reader))
                while not reading.done() and time.monotonic() < deadline:
                    writer.write(b"[")
                    await writer.drain()
                    await asyncio.wait([reading], timeout=1.0)
                outcomes[reading.result() if reading.done() else "still-open-at-end"] += 1
                reading.cancel()
            except (ConnectionError, OSError):
                outcomes["reset"] += 1
            finally:
                writer.close()

    async def slow_headers():
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                outcomes["connect-failed"] += 1
                await asyncio.sleep(0.5)
                continue
            try:
                writer.write(b"POST /predict HTTP/1.1\\r\\n")
                reading = asyncio.ensure_future(answer(reader))
                header = 0
                while not reading.done() and time.monotonic() < deadline:
                    writer.write(f"X-Slow-{header}: y\\r\\n".encode())
                    header += 1
                    await writer.drain()
                    await asyncio.wait([reading], timeout=2.0)
                outcomes["headers-" + (reading.result() if reading.done() else "still-open-at-end")] += 1
                reading.cancel()
            except (ConnectionError, OSError):
                outcomes["headers-reset"] += 1
            finally:
                writer.close()

    async def main():
        await asyncio.gather(*[uploader() for _ in range(count - count // 2)], *[slow_headers() for _ in range(count // 2)])

    asyncio.run(main())
    print(json.dumps(dict(outcomes)))
    """
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_clients(script: str, arguments: list[str], seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(process: subprocess.Popen, seconds: float) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise RuntimeError(f"a client process overran its deadline: {stderr[-1000:]}") from None
    if process.returncode != 0:
        raise RuntimeError(f"a client process failed: {stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def phase(server, body: str, good: int, slow: int, seconds: float) -> dict:
    """Good clients (and slow ones) for ``seconds``; the server's memory sampled meanwhile."""
    samples, stop = [], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mib(server.process.pid))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    slow_process = run_clients(SLOW_CLIENTS, ["127.0.0.1", str(server.port), str(slow), str(seconds)], seconds) if slow else None
    if slow_process:
        time.sleep(2.0)  # let the slow connections pile up first
    good_process = run_clients(GOOD_CLIENTS, ["127.0.0.1", str(server.port), body, str(good), str(seconds)], seconds)
    good_result = collect(good_process, seconds)
    slow_result = collect(slow_process, seconds) if slow_process else {}
    stop.set()
    sampler.join()
    latencies = good_result["latencies"]
    return {
        "seconds": seconds,
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies, default=float("nan")),
        "errors": len(good_result["errors"]),
        "error_kinds": sorted(set(good_result["errors"])),
        "slow_outcomes": slow_result,
        "rss_start_mib": samples[0] if samples else float("nan"),
        "rss_peak_mib": max(samples, default=float("nan")),
        "rss_end_mib": samples[-1] if samples else float("nan"),
    }


def logged_lines(log_dir: Path) -> int:
    return sum(len(path.read_bytes().splitlines()) for path in log_dir.glob("requests-*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the soak (good + slow clients)")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds of good clients alone, first")
    parser.add_argument("--good", type=int, default=8, help="good keep-alive clients")
    parser.add_argument("--slow", type=int, default=200, help="slow connections (half uploaders, half header senders)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cauce-soak-") as tmp:
        work = Path(tmp)
        raw, model_dir = train_cauce_model(work)
        from cauce.components.deploy.executor import smoke_instances_from

        body = json.dumps({"instances": smoke_instances_from(raw, "eval", model_dir, rows=1)})
        log_dir = work / "requests"
        server = start_ours(model_dir, str(log_dir))
        try:
            server.wait_ready(body.encode())
            warm = logged_lines(log_dir)
            baseline = phase(server, body, args.good, 0, args.baseline)
            soak = phase(server, body, args.good, args.slow, args.duration)
            status, _ = post(server.url, body.encode(), timeout=10)
            time.sleep(0.2)
            answered = warm + baseline["requests"] + soak["requests"] + (status == 200)
            logged = logged_lines(log_dir)
        finally:
            server.stop()
    report(args, baseline, soak, status, answered, logged)
    if soak["errors"] or status != 200 or logged < answered:
        sys.exit(1)


def report(args, baseline: dict, soak: dict, status: int, answered: int, logged: int) -> None:
    print(f"\nserving soak on {os.cpu_count()} cores: {args.good} good clients, 1-instance requests, loopback")
    print(f"{'phase':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} {'RSS MiB start/peak/end':>24}")
    for name, result in ((f"baseline ({args.baseline:.0f} s, good only)", baseline),
                         (f"soak ({args.duration:.0f} s, +{args.slow} slow)", soak)):  # fmt: skip
        print(
            f"{name:<34} {result['rps']:8.0f} {result['p50_ms']:8.2f} {result['p99_ms']:8.2f} {result['max_ms']:8.1f} "
            f"{result['errors']:7d} {result['rss_start_mib']:7.0f} /{result['rss_peak_mib']:6.0f} /{result['rss_end_mib']:6.0f}"
        )
    print(f"p99 soak / baseline: {soak['p99_ms'] / baseline['p99_ms']:.2f}x; p50: {soak['p50_ms'] / baseline['p50_ms']:.2f}x")
    print(f"slow connections' outcomes: {json.dumps(soak['slow_outcomes'], sort_keys=True)}")
    if soak["error_kinds"]:
        print(f"good clients' errors: {soak['error_kinds']}")
    print(f"after the soak the server answered HTTP {status}; request log: {logged} lines for {answered} answered requests")


if __name__ == "__main__":
    main()
