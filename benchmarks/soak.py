"""Soak test: steady open-loop load at ~80% of measured capacity, watching memory and errors.

    python benchmarks/soak.py --store model_store                # own TorchServe, 10 minutes
    python benchmarks/soak.py --url http://127.0.0.1:8080 --duration 120 --rate 20

With --store, a TorchServe is started on free 127.0.0.1 ports with serving/config.properties
(its pid file, worker sockets and gRPC ports are private, so it can run beside `make serve`);
otherwise the server at --url/--management-url is used. All traffic goes to 127.0.0.1.

1. capacity: --calibrate seconds of closed-loop load (--concurrency clients) -> requests/s
   (skipped when --rate is given); the soak rate is --load-fraction (0.8) of it.
2. soak: requests are sent on a fixed schedule (open loop) for --duration seconds, at most
   --max-in-flight at once; a request more than 1 s behind schedule is skipped and counted
   as "late" (an overloaded server is not hit with a catch-up burst).
   Every --interval seconds: requests, status counts, latency p50/p95/p99, and the RSS of the
   TorchServe frontend (java) and of the workers (with their children).
3. verdict: RSS growth (median of the window after --warmup vs median of the last window,
   RSS sampled every 5 s), and the 5xx count. Exit status 1
   when 5xx > 0 or either RSS grows by more than --max-rss-growth percent (5).
"""
import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
import requests

from harness.server import TorchServe, frontend_process
from benchmarks.stats import percentile

REPO = Path(__file__).resolve().parent.parent
MODEL = "bert_sentiment"
WORDS = ("the movie film was plot actors and a scene story it this i ending music really great "
         "wonderful loved brilliant superb moving awful boring hated terrible dull waste but not "
         "very quite too much acting director script characters performance watch time").split()


def reviews(count: int, seed: int = 0) -> list[bytes]:
    """IMDB-like lengths: 40 to 400 words (IMDB's median review is ~175 words)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 400))).encode()
            for _ in range(count)]


# --- a private TorchServe -------------------------------------------------------------------

def describe(management: str) -> dict:
    return requests.get(f"{management}/models/{MODEL}", timeout=10).json()[0]


def ready(management: str) -> bool:
    try:
        return any(w["status"] == "READY" for w in describe(management)["workers"])
    except (requests.RequestException, ValueError, KeyError, IndexError):
        return False


# --- memory -----------------------------------------------------------------------------------

def rss_mb(processes) -> float:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
            total += sum(child.memory_info().rss for child in process.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class Memory:
    def __init__(self, url: str, management: str):
        self.frontend = frontend_process(url)
        self.management = management

    def sample(self) -> dict:
        pids = [int(w["pid"]) for w in describe(self.management)["workers"] if w.get("pid")]
        workers = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
        return {"java_mb": self.frontend.memory_info().rss / 2**20,
                "workers_mb": rss_mb(workers), "worker_pids": pids}


# --- load -------------------------------------------------------------------------------------

async def post(session, url: str, body: bytes, timeout: float):
    started = time.monotonic()
    try:
        async with session.post(url, data=body, headers={"Content-Type": "text/plain"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            await response.read()
            status = response.status
    except asyncio.TimeoutError:
        status = "timeout"
    except aiohttp.ClientError:
        status = "conn"
    return status, time.monotonic() - started


async def capacity(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> float:
    """Closed loop: requests/s answered 200 by `concurrency` back-to-back clients."""
    ok = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        async def client(i):
            nonlocal ok
            n = i
            while time.monotonic() < deadline:
                status, _ = await post(session, url, bodies[n % len(bodies)], 60)
                ok += status == 200
                n += concurrency
        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        return ok / (time.monotonic() - started)


async def soak(args, url: str, memory: Memory, bodies: list[bytes]) -> dict:
    intervals, samples, in_flight = [], [], set()
    current = {"latencies": [], "statuses": {}, "late": 0}
    semaphore = asyncio.Semaphore(args.max_in_flight)
    start = time.monotonic()
    total = int(args.duration * args.rate)

    async def one(session, body):
        try:
            status, seconds = await post(session, url, body, args.timeout)
            bucket = current
            bucket["statuses"][status] = bucket["statuses"].get(status, 0) + 1
            if status == 200:
                bucket["latencies"].append(seconds)
        finally:
            semaphore.release()

    def flush(seconds: float) -> None:
        done = dict(current)
        current.update(latencies=[], statuses={}, late=0)
        mem = memory.sample()
        lat, count = done["latencies"], sum(done["statuses"].values())
        row = {"t_s": round(time.monotonic() - start), "requests": count,
               "statuses": done["statuses"], "late": done["late"],
               "rate": round(count / seconds, 1),
               **{f"p{q}_ms": round(percentile(lat, q) * 1000, 1) if lat else None
                  for q in (50, 95, 99)},
               "java_mb": round(mem["java_mb"], 1), "workers_mb": round(mem["workers_mb"], 1),
               "worker_pids": mem["worker_pids"]}
        intervals.append(row)
        print(json.dumps(row), flush=True)

    async def reporter():
        while True:
            await asyncio.sleep(args.interval)
            await asyncio.to_thread(flush, args.interval)

    async def sampler():
        while True:
            mem = await asyncio.to_thread(memory.sample)
            samples.append((time.monotonic() - start, mem["java_mb"], mem["workers_mb"]))
            await asyncio.sleep(5)

    connector = aiohttp.TCPConnector(limit=args.max_in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(reporter()), asyncio.create_task(sampler())]
        for i in range(total):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # over a second behind schedule: skip, do not catch up in a burst
                current["late"] += 1
                continue
            await semaphore.acquire()  # at most --max-in-flight outstanding
            task = asyncio.create_task(one(session, bodies[i % len(bodies)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.wait_for(asyncio.gather(*in_flight), timeout=args.timeout + 5)
        for task in tasks:
            task.cancel()
        if sum(current["statuses"].values()):  # the last, partial interval
            flush(max(1e-3, (time.monotonic() - start) - args.interval * len(intervals)))
    return {"intervals": intervals, "samples": samples}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="start a private TorchServe on this store")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--duration", type=float, default=600, help="soak seconds (600)")
    parser.add_argument("--rate", type=float, help="requests/s (default: measured x fraction)")
    parser.add_argument("--load-fraction", type=float, default=0.8)
    parser.add_argument("--calibrate", type=float, default=20, help="capacity seconds (20)")
    parser.add_argument("--concurrency", type=int, default=16, help="capacity clients (16)")
    parser.add_argument("--warmup", type=float, default=60, help="RSS baseline after (60 s)")
    parser.add_argument("--interval", type=float, default=60, help="report every (60 s)")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=30, help="per request (30 s)")
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent (5)")
    parser.add_argument("--output", type=Path, help="write the full result as JSON")
    args = parser.parse_args(argv)
    for url in (args.url, args.management_url):
        host = url.split("//", 1)[-1].split(":", 1)[0].split("/", 1)[0]
        if host not in ("127.0.0.1", "localhost"):
            parser.error(f"{url}: this load generator only talks to 127.0.0.1")

    server = None
    if args.store:
        server = TorchServe(Path(tempfile.mkdtemp(prefix="soak-ts-")), args.store)
        print(f"starting TorchServe on {server.inference} (workdir {server.workdir})", flush=True)
        server.wait_ready(timeout=300)
        args.url, args.management_url = server.inference, server.management
    try:
        url = f"{args.url}/predictions/{MODEL}"
        bodies = reviews(500)
        memory = Memory(args.url, args.management_url)
        model = describe(args.management_url)
        print(f"model {MODEL} version {model.get('modelVersion')}, batchSize "
              f"{model.get('batchSize')}, workers {len(model['workers'])}", flush=True)
        if args.rate is None:
            measured = asyncio.run(capacity(url, bodies, args.calibrate, args.concurrency))
            args.rate = round(measured * args.load_fraction, 2)
            print(f"capacity {measured:.1f} req/s ({args.concurrency} closed-loop clients, "
                  f"{args.calibrate:.0f} s) -> soak at {args.rate} req/s", flush=True)
        if args.rate <= 0:
            raise SystemExit("capacity is 0 req/s: is the model answering?")
        first = memory.sample()
        print(f"soak {args.duration:.0f} s at {args.rate} req/s; RSS at start: java "
              f"{first['java_mb']:.0f} MB, workers {first['workers_mb']:.0f} MB", flush=True)
        result = asyncio.run(soak(args, url, memory, bodies))
        last = memory.sample()
    finally:
        if server:
            server.stop()

    # RSS is noisy (+-10% from batch to batch): compare the median of a window right after
    # the warm-up with the median of the last window of the same length
    samples = result["samples"]
    window = min(60.0, max(10.0, (args.duration - args.warmup) / 3))
    early = [s for s in samples if args.warmup <= s[0] < args.warmup + window] or samples[:3]
    late = [s for s in samples if s[0] >= samples[-1][0] - window] or samples[-3:]
    base = (early[0][0], statistics.median(s[1] for s in early),
            statistics.median(s[2] for s in early))
    end = (late[0][0], statistics.median(s[1] for s in late), statistics.median(s[2] for s in late))
    growth = {"java": 100 * (end[1] - base[1]) / base[1],
              "workers": 100 * (end[2] - base[2]) / base[2]}
    statuses = {}
    for row in result["intervals"]:
        for status, count in row["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    errors_5xx = sum(c for s, c in statuses.items() if isinstance(s, int) and s >= 500)
    other = sum(c for s, c in statuses.items() if s != 200)
    all_p99 = [row["p99_ms"] for row in result["intervals"]]
    summary = {
        "rate": args.rate, "duration_s": args.duration, "statuses": statuses,
        "errors_5xx": errors_5xx, "non_200": other,
        "late": sum(row["late"] for row in result["intervals"]),
        "rss_start": {"java_mb": round(first["java_mb"], 1),
                      "workers_mb": round(first["workers_mb"], 1)},
        "rss_after_warmup_median": {"from_t_s": round(base[0]), "window_s": window,
                                    "java_mb": round(base[1], 1), "workers_mb": round(base[2], 1)},
        "rss_end_median": {"from_t_s": round(end[0]), "java_mb": round(end[1], 1),
                           "workers_mb": round(end[2], 1)},
        "rss_end": {"java_mb": round(last["java_mb"], 1), "workers_mb": round(last["workers_mb"], 1)},
        "rss_max": {"java_mb": round(max(s[1] for s in samples), 1),
                    "workers_mb": round(max(s[2] for s in samples), 1)},
        "rss_growth_pct": {k: round(v, 2) for k, v in growth.items()},
        "worker_restarts": len({tuple(r["worker_pids"]) for r in result["intervals"]}) - 1,
        "p99_ms_per_interval": all_p99,
        "p50_ms_overall": round(statistics.median(
            [row["p50_ms"] for row in result["intervals"]]), 1) if result["intervals"] else None,
    }
    passed = errors_5xx == 0 and max(growth.values()) < args.max_rss_growth
    summary["verdict"] = "PASS" if passed else "FAIL"
    print(json.dumps(summary, indent=2))
    if args.output:
        args.output.write_text(json.dumps({**summary, **result}, indent=2, default=str))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
