"""`make bench-gpu` (python -m benchmarks.gpu) on the CPU, as a user runs it: a bad served
configuration is refused with the reason, and a few-second smoke run (in-process limit, time
breakdown, one served configuration on a real TorchServe) against the tiny model, so the GPU
benchmark still runs where no GPU is. No timing assertions."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def bench_gpu(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("configs", ["64/5", "64/five/1", "0/5/1", "64/5/0", "64/5/1,8"])
def test_a_bad_served_configuration_is_refused(configs):
    done = bench_gpu("--device", "cpu", "--configs", configs, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "bad configuration" in done.stderr and "--configs" in done.stderr, done.stderr


@pytest.mark.serve
def test_gpu_benchmark_smoke_on_the_cpu(tiny_run, reviews_dir, tmp_path):
    done = bench_gpu("--run", tiny_run, "--data", reviews_dir, "--device", "cpu", "--quick",
                     "--precision", "fp32", "--output", tmp_path, "--configs", "16/5/1",
                     "--concurrency", "1,4", "--duration", "1", "--warmup", "0.2",
                     "--inprocess-seconds", "0.2", "--batches", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "bench-gpu.json").read_text())
    assert result["machine"]["device"] == "cpu"
    limit = result["inprocess"]
    assert set(limit["reviews_per_s_by_batch"]) == {"1", "16"}  # JSON keys
    assert limit["best_reviews_per_s"] == max(limit["reviews_per_s_by_batch"].values()) > 0
    breakdown = result["breakdown"]
    assert set(breakdown["ms_per_call"]) == {"tokenize", "pad_copy", "forward", "serialise"}
    assert all(ms > 0 for ms in breakdown["ms_per_call"].values())
    assert sum(breakdown["share"].values()) == pytest.approx(1.0, abs=0.01)
    assert breakdown["dominant"] == max(breakdown["ms_per_call"],
                                        key=breakdown["ms_per_call"].get)
    (system,) = result["systems"].values()
    assert system["name"] == "ts-b16-d5-w1"
    assert (system["batchSize"], system["maxBatchDelay"], system["workers"]) == (16, 5, 1)
    assert [entry["concurrency"] for entry in system["levels"]] == [1, 4]
    assert all(entry["errors"] == 0 and entry["ok"] > 0 for entry in system["levels"])
    assert system["workers_ready"] == 1
    assert result["ratios"][system["name"]]["vs_inprocess"] > 0
    assert f"| {system['name']} |" in (tmp_path / "bench-gpu.md").read_text()
