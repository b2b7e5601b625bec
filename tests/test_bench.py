"""`make bench` as a user runs it (`python -m benchmarks.run`, and its load generator
`python -m benchmarks.loadgen`) on the tiny archived model: a few-second end-to-end run against
real TorchServes and the seed-style Flask baseline (loopback only), and the report it writes
checked against the numbers it measured: percentiles in order, the ratios and target verdicts
that follow from them, the markdown tables that show them. No timing assertions: numbers here
mean nothing."""
import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, synthetic_reviews

MAX_REQUESTS = 40


def module(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repository root, as the Makefile runs it."""
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("url", ["http://0.0.0.0:80/", "http://10.0.0.1:8080/",
                                 "http://example.com/predictions/bert_sentiment"])
def test_load_is_only_sent_to_loopback(url):
    done = module("benchmarks.loadgen", url, "--concurrency", "1", "--duration", "0.2")
    assert done.returncode == 2
    assert "only loopback endpoints are allowed" in done.stderr, done.stderr[-2000:]


def test_loopback_by_name_is_loaded(tmp_path):
    """localhost is loopback: the load goes out (to a closed port here: every request fails,
    and the report says so). The replayed texts are 2,000 held out of 2,100 reviews."""
    synthetic_reviews(2100).to_parquet(tmp_path / "train.parquet")
    done = module("benchmarks.loadgen", "http://localhost:1/predictions/bert_sentiment",
                  "--data", tmp_path, "--concurrency", "1", "--duration", "0.3",
                  "--warmup", "0", "--max-requests", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    (level,) = json.loads(done.stdout)
    assert level["ok"] == 0 and level["errors"] == level["requests"] > 0, level


def goal_met(value: float, goal: str) -> bool:
    """A target's verdict from its measured value and its goal (">= 3.0", "<= 41.2")."""
    operator, bound = goal.split()
    return value >= float(bound) if operator == ">=" else value <= float(bound)


def sst_validation(directory):
    """SST-2's layout: validation.parquet, lowercased and Penn-Treebank tokenized sentences."""
    import pandas as pd
    sentences = ["it 's not bad , is n't it ?", "a gorgeous , witty , seductive movie .",
                 "the story is too thin -lrb- and too long -rrb- .", "i did n't like it ."]
    pd.DataFrame({"text": sentences * 5, "label": [1, 1, 0, 0] * 5}).to_parquet(
        directory / "validation.parquet")
    return directory


@pytest.mark.serve
def test_quick_benchmark_run_end_to_end(tiny_run, reviews_dir, tmp_path):
    out = tmp_path / "out"
    short = sst_validation(tmp_path)
    done = module("benchmarks.run", "--run", tiny_run, "--data", reviews_dir, "--output", out,
                  "--short-data", short,
                  "--quick", "--precision", "fp32", "--concurrency", "1,16", "--duration", "1",
                  "--warmup", "0.2", "--inprocess-seconds", "0.2", "--batch-sizes", "1,4",
                  "--accuracy-samples", "24", "--max-requests", MAX_REQUESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    assert result["settings"]["workloads"] == ["long", "short"]
    assert set(result["workloads"]) == {"long", "short"}
    assert result["workloads"]["short"]["source"] == str(short / "validation.parquet")
    assert result["workloads"]["short"]["texts"] == 20
    assert isinstance(result["machine"]["cpu_flags"], list)
    table = (out / "bench.md").read_text()
    for workload, measured in result["workloads"].items():
        check_workload(measured, table, workload)
        assert f"### {workload}: {measured['source']}, {measured['texts']} texts" in table

    # accuracy of what was served (fp32 the reference), not of precisions nobody benchmarked
    assert set(result["accuracy"]) == {"fp32", "openvino"}
    assert result["accuracy"]["openvino"]["agreement_with_fp32"] >= 0.95
    assert (out / "bench.png").stat().st_size > 0


def check_workload(result: dict, table: str, workload: str) -> None:
    """One workload's report: its levels, CPU per request by process, ratios and target
    verdicts follow from what it measured, and the markdown shows them."""
    systems, limits = result["systems"], result["inprocess"]
    assert set(systems) == {"seed", "ts-fp32", "ts-openvino"}
    shipped = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    for name in ("ts-fp32", "ts-openvino"):  # served with the shipped batching
        assert (systems[name]["batchSize"], systems[name]["maxBatchDelay"]) == \
            (shipped["batchSize"], shipped["maxBatchDelay"]), name
    assert set(limits) == {"fp32", "openvino"}  # the limit is the best runtime
    for name, system in systems.items():
        assert [level["concurrency"] for level in system["levels"]] == [1, 16], name
        for level in system["levels"]:
            assert level["errors"] == 0 and level["ok"] == level["requests"] > 0, (name, level)
            assert level["requests"] <= MAX_REQUESTS, (name, level)
            assert level["reviews_per_s"] > 0
            assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"], (name, level)
            # CPU per request by process: java frontend and Python worker, or the Flask server
            cpu = level["cpu_ms_per_request"]
            roles = {"server", "client"} if name == "seed" else {"frontend", "worker", "client"}
            assert roles <= set(cpu) and all(cpu[role] > 0 for role in roles), (name, cpu)
            server_ms = sum(ms for role, ms in cpu.items() if role != "client")
            assert server_ms == pytest.approx(1000 * level["server_cpu_s"] / level["ok"],
                                              rel=0.05, abs=2), (name, cpu)

    # the ratios at concurrency 16 follow from the measured levels
    ratios = result["ratios"]
    assert ratios["concurrency"] == 16
    best = max(limits, key=lambda name: limits[name]["best_reviews_per_s"])
    assert ratios["limit"] == best
    seed = systems["seed"]["levels"][1]
    for name, system in systems.items():
        level, row = system["levels"][1], ratios["systems"][name]
        limit = limits.get(system["precision"])
        assert row["vs_seed"] == round(level["reviews_per_s"] / seed["reviews_per_s"], 3)
        assert row["p99_vs_seed"] == round(level["p99_ms"] / seed["p99_ms"], 3)
        assert row["vs_inprocess"] == (
            None if limit is None else round(level["reviews_per_s"] / limit["best_reviews_per_s"], 3))
        assert row["vs_limit"] == round(level["reviews_per_s"] / limits[best]["best_reviews_per_s"], 3)
    assert ratios["systems"]["seed"]["vs_seed"] == 1.0

    # every target measured, its verdict the comparison of its value with its goal
    targets = result["targets"]
    assert targets["system"] == "ts-fp32"
    assert targets["limit"] == best
    checks = {check["target"].split(" @")[0]: check for check in targets["checks"]}
    long = workload == "long"  # one-line reviews have no seed-throughput goal
    assert set(checks) == {"throughput vs in-process limit", "p99 vs seed p99",
                           "idle p50 vs in-process batch-1 + 8 ms",
                           "cold start (start to first prediction)"} | (
        {"throughput vs seed"} if long else set())
    assert checks["throughput vs in-process limit"]["goal"] == (">= 0.85" if long else ">= 0.6")
    for check in checks.values():
        assert check["value"] is not None and check["met"] == goal_met(check["value"],
                                                                       check["goal"]), check
    served = systems["ts-fp32"]
    if long:
        assert checks["throughput vs seed"]["value"] == pytest.approx(
            ratios["systems"]["ts-fp32"]["vs_seed"], abs=1e-3)
        assert checks["throughput vs seed"]["goal"] == ">= 1.3"
    assert checks["throughput vs in-process limit"]["value"] == pytest.approx(
        served["levels"][1]["reviews_per_s"] / limits[targets["limit"]]["best_reviews_per_s"],
        abs=1e-3)
    assert checks["p99 vs seed p99"]["goal"] == f"<= {seed['p99_ms']}"
    assert checks["idle p50 vs in-process batch-1 + 8 ms"]["value"] == \
        served["levels"][0]["p50_ms"]
    assert checks["cold start (start to first prediction)"]["value"] == served["cold_start_s"]

    # the markdown shows those numbers
    for name, system in systems.items():
        for level in system["levels"]:
            assert re.search(rf"^\| {re.escape(name)} \| {system['precision']} \|[^\n]*\| "
                             rf"{level['concurrency']} \| {level['reviews_per_s']:.1f} \| "
                             rf"{level['p50_ms']} \|", table, re.M), (name, level)
    row = ratios["systems"]["ts-fp32"]
    assert (f"| ts-fp32 | {row['reviews_per_s']:.1f} | {row['vs_seed']:.2f} | "
            f"{row['vs_inprocess']:.2f} | {row['vs_limit']:.2f} | "
            f"{row['p99_vs_seed']:.2f} |") in table


def test_short_workload_without_any_data_directory(tiny_run, tmp_path):
    """A fresh clone without ../shared: `--workload short` needs no IMDB directory and, with
    no SST-2 directory, replays the repository's data/short_reviews.jsonl (in-process only
    here: no server)."""
    import os
    env = {key: value for key, value in os.environ.items()
           if key not in ("SST2_DATA_DIR", "IMDB_DATA_DIR")}
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--run", str(tiny_run), "--output", str(out),
         "--workload", "short", "--short-data", str(tmp_path / "missing"), "--systems",
         "inprocess", "--quick", "--precision", "fp32", "--inprocess-seconds", "0.1",
         "--batch-sizes", "1,2"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    assert list(result["workloads"]) == ["short"]
    short = result["workloads"]["short"]
    lines = (REPO / "data" / "short_reviews.jsonl").read_text().splitlines()
    assert short["source"] == str(REPO / "data" / "short_reviews.jsonl")
    assert short["texts"] == len([line for line in lines if line.strip()])
    assert set(short["inprocess"]) == {"fp32", "openvino"}
    assert short["systems"] == {} and "accuracy" not in result
