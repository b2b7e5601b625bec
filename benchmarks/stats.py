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


# the served targets per workload, at concurrency 16: throughput against the seed-style server
# (none set for one-line reviews) and against the in-process limit; p99 against the seed's; and
# the idle (concurrency 1) p50 against the in-process batch-1 p50 plus a margin
TARGETS = {"long": {"vs_seed": 1.3, "vs_limit": 0.85}, "short": {"vs_seed": None, "vs_limit": 0.6}}
IDLE_MARGIN_MS = 8


def check_targets(served: dict, seed: dict, limit: dict | None, concurrency: int = 16,
                  cold_start_s: float | None = None, workload: str = "long") -> list[dict]:
    """The issue's targets for one served system on one workload, each with its measured value
    and verdict.

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

    goals = TARGETS[workload]
    if goals["vs_seed"] is not None:
        speedup = ratio(get(s, "reviews_per_s"), get(b, "reviews_per_s"))
        add(f"throughput vs seed @c{concurrency}", speedup, f">= {goals['vs_seed']}",
            None if speedup is None else speedup >= goals["vs_seed"], "x")
    of_limit = ratio(get(s, "reviews_per_s"), limit.get("best_reviews_per_s"))
    add(f"throughput vs in-process limit @c{concurrency}", of_limit, f">= {goals['vs_limit']}",
        None if of_limit is None else of_limit >= goals["vs_limit"], "x")
    p99, seed_p99 = get(s, "p99_ms"), get(b, "p99_ms")
    add(f"p99 vs seed p99 @c{concurrency}", p99, f"<= {seed_p99}",
        None if p99 is None or seed_p99 is None else p99 <= seed_p99, "ms")
    idle_p50, batch1 = get(idle, "p50_ms"), limit.get("batch1_p50_ms")
    add(f"idle p50 vs in-process batch-1 + {IDLE_MARGIN_MS} ms", idle_p50,
        None if batch1 is None else f"<= {batch1 + IDLE_MARGIN_MS:.1f}",
        None if idle_p50 is None or batch1 is None else idle_p50 <= batch1 + IDLE_MARGIN_MS,
        "ms")
    add("cold start (start to first prediction)", cold_start_s, "<= 20",
        None if cold_start_s is None else cold_start_s <= 20, "s")
    return targets
