"""Pure maths of the benchmark: percentiles, per-level summaries, ratios and the target checks.
No I/O. tests/test_bench.py checks them in the report `python -m benchmarks.run` writes."""


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0..100), linearly interpolated between closest ranks
    (numpy.percentile's default). None for no values."""
    import numpy
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    values = list(values)
    return float(numpy.percentile(values, q)) if values else None


def summarize(latencies_s: list[float], errors: int, elapsed_s: float, reviews: int,
              concurrency: int) -> dict:
    """One concurrency level: throughput (successful reviews per second of the measured window)
    and latency percentiles in milliseconds over the successful requests."""
    ms = [latency * 1000 for latency in latencies_s]

    def rounded(value):
        return None if value is None else round(value, 2)

    return {
        "concurrency": concurrency,
        "requests": len(ms) + errors,
        "ok": len(ms),
        "errors": errors,
        "elapsed_s": round(elapsed_s, 3),
        "reviews_per_s": round(reviews / elapsed_s, 2) if elapsed_s > 0 else 0.0,
        "p50_ms": rounded(percentile(ms, 50)),
        "p95_ms": rounded(percentile(ms, 95)),
        "p99_ms": rounded(percentile(ms, 99)),
        "mean_ms": rounded(sum(ms) / len(ms)) if ms else None,
    }


def ratio(numerator, denominator) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def level(system: dict | None, concurrency: int) -> dict | None:
    """The result of `system` at `concurrency`, if it was measured."""
    if not system:
        return None
    for entry in system.get("levels", []):
        if entry["concurrency"] == concurrency:
            return entry
    return None


def get(entry: dict | None, key: str):
    return None if entry is None else entry.get(key)


def check_targets(served: dict, seed: dict, limit: dict | None, concurrency: int = 16,
                  cold_start_s: float | None = None) -> list[dict]:
    """The issue's targets for one served system, each with its measured value and verdict.

    `served` and `seed` are systems ({"levels": [...]}); `limit` is the in-process result at the
    served precision ({"best_reviews_per_s", "batch1_p50_ms"}). A target whose inputs are
    missing gets met=None (not measured) rather than a guess.
    """
    s, b = level(served, concurrency), level(seed, concurrency)
    idle = level(served, 1)
    limit = limit or {}
    targets = []

    def add(name, value, goal, met, unit=""):
        targets.append({"target": name, "value": None if value is None else round(value, 3),
                        "goal": goal, "unit": unit, "met": met})

    speedup = ratio(get(s, "reviews_per_s"), get(b, "reviews_per_s"))
    add(f"throughput vs seed @c{concurrency}", speedup, ">= 3.0", None if speedup is None
        else speedup >= 3.0, "x")
    of_limit = ratio(get(s, "reviews_per_s"), limit.get("best_reviews_per_s"))
    add(f"throughput vs in-process limit @c{concurrency}", of_limit, ">= 0.85",
        None if of_limit is None else of_limit >= 0.85, "x")
    p99, seed_p99 = get(s, "p99_ms"), get(b, "p99_ms")
    add(f"p99 vs seed p99 @c{concurrency}", p99, f"<= {seed_p99}",
        None if p99 is None or seed_p99 is None else p99 <= seed_p99, "ms")
    idle_p50, batch1 = get(idle, "p50_ms"), limit.get("batch1_p50_ms")
    add("idle p50 vs in-process batch-1 + 10 ms", idle_p50,  # issue 14 (was + 15 ms)
        None if batch1 is None else f"<= {batch1 + 10:.1f}",
        None if idle_p50 is None or batch1 is None else idle_p50 <= batch1 + 10, "ms")
    add("cold start (start to first prediction)", cold_start_s, "<= 20",
        None if cold_start_s is None else cold_start_s <= 20, "s")
    return targets
