"""Closed-loop HTTP load generator (asyncio + aiohttp): `concurrency` clients each POST one
review as text/plain, wait for the answer and send the next, replaying the given texts in a
cycle. A warm-up at the same concurrency comes first and is not counted; the measured window then
ends after `duration` seconds or `max_requests` requests, whichever comes first (requests in
flight at the deadline are awaited and counted).

    python -m benchmarks.loadgen URL --data $IMDB_DATA_DIR --concurrency 1,4,16 --duration 10

Only loopback URLs are accepted: the harness never sends load anywhere else.
"""
import argparse
import asyncio
import ipaddress
import itertools
import json
import time
from urllib.parse import urlparse

from benchmarks.stats import summarize

LOOPBACK_NAMES = {"localhost"}


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname or ""
    if host in LOOPBACK_NAMES:
        return url
    try:
        if ipaddress.ip_address(host).is_loopback:
            return url
    except ValueError:
        pass
    raise ValueError(f"refusing to send load to {url!r}: only loopback endpoints are allowed")


async def _measure(session, url: str, texts: list[str], concurrency: int, duration: float,
                   max_requests: int | None, timeout: float) -> dict:
    import aiohttp
    cycle = itertools.cycle(range(len(texts)))
    latencies, errors, reviews = [], [0], [0]
    sent = [0]
    deadline = time.perf_counter() + duration
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    error_kinds: dict[str, int] = {}

    async def client():
        while time.perf_counter() < deadline and (max_requests is None or sent[0] < max_requests):
            sent[0] += 1
            body = texts[next(cycle)].encode("utf-8")
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, timeout=client_timeout,
                                        headers={"Content-Type": "text/plain"}) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                status = type(err).__name__
            if status == 200:
                latencies.append(time.perf_counter() - started)
                reviews[0] += 1
            else:
                errors[0] += 1
                error_kinds[str(status)] = error_kinds.get(str(status), 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    result = summarize(latencies, errors[0], elapsed, reviews[0], concurrency)
    result["error_kinds"] = error_kinds
    return result


async def run_levels(url: str, texts: list[str], levels: list[int], duration: float,
                     warmup: float, max_requests: int | None = None,
                     timeout: float = 120.0, cpu_clock=None, cpu_roles=None) -> list[dict]:
    """Measure each concurrency level in turn on one connection pool per level. With
    `cpu_clock` (the server's CPU seconds so far), also the server's CPU time in the measured
    window and reviews per CPU-second: on a machine shared with other work, throughput follows
    the share of the CPUs the server gets; work per CPU-second does much less. With
    `cpu_roles` (the server's CPU seconds so far by process, {"frontend": s, "worker": s}),
    CPU-ms per request of each, and of this client (its process CPU time)."""
    import aiohttp
    check_loopback(url)
    if not texts:
        raise ValueError("no texts to replay")
    results = []
    for concurrency in levels:
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            if warmup > 0:
                await _measure(session, url, texts, concurrency, warmup, None, timeout)
            # start each level at a different place in the texts, but deterministically
            offset = (concurrency * 7919) % len(texts)
            cpu_before = cpu_clock() if cpu_clock else None
            roles_before, client_before = (cpu_roles() if cpu_roles else {}), time.process_time()
            result = await _measure(session, url, texts[offset:] + texts[:offset], concurrency,
                                    duration, max_requests, timeout)
            if cpu_roles and result["ok"]:
                roles = {**cpu_roles(), "client": time.process_time()}
                roles_before["client"] = client_before
                result["cpu_ms_per_request"] = {
                    role: round(1000 * (seconds - roles_before.get(role, 0.0)) / result["ok"], 2)
                    for role, seconds in sorted(roles.items())}
            if cpu_clock:
                cpu = cpu_clock() - cpu_before
                result["server_cpu_s"] = round(cpu, 2)
                result["reviews_per_cpu_s"] = round(
                    result["reviews_per_s"] * result["elapsed_s"] / cpu, 2) if cpu > 0 else None
        results.append(result)
    return results


def load_levels(url: str, texts: list[str], levels: list[int], duration: float, warmup: float,
                max_requests: int | None = None, timeout: float = 120.0,
                cpu_clock=None, cpu_roles=None) -> list[dict]:
    return asyncio.run(run_levels(url, texts, levels, duration, warmup, max_requests, timeout,
                                  cpu_clock, cpu_roles))


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"bad concurrency list {text!r}")
    return levels


def loopback_url(url: str) -> str:
    """check_loopback as an argparse type: a refused URL is a usage error, before any data."""
    try:
        return check_loopback(url)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", type=loopback_url,
                        help="loopback endpoint, e.g. http://127.0.0.1:8080/predictions/"
                             "bert_sentiment")
    parser.add_argument("--data", help="parquet directory with train.parquet "
                                       "(default: $IMDB_DATA_DIR)")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--concurrency", type=parse_levels, default=[1, 4, 16, 64])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-requests", type=int)
    args = parser.parse_args(argv)
    from benchmarks.texts import load_texts
    texts = load_texts(args.data, args.texts)
    results = load_levels(args.url, texts, args.concurrency, args.duration, args.warmup,
                          args.max_requests)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
