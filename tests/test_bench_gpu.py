"""benchmarks/gpu.py (`make bench-gpu`) on the CPU: its configuration parsing, and a few-second
smoke run (in-process limit, time breakdown, one served configuration on a real TorchServe)
against the tiny model, so the GPU benchmark still runs where no GPU is. No timing assertions."""
import argparse
import json

import pytest

from benchmarks.gpu import parse_configs


def test_parse_configs():
    configs = parse_configs("64/5/1,256/10/4")
    assert [c["name"] for c in configs] == ["ts-b64-d5-w1", "ts-b256-d10-w4"]
    assert configs[1] == {"name": "ts-b256-d10-w4", "batchSize": 256, "maxBatchDelay": 10,
                          "workers": 4}
    for bad in ("64/5", "64/five/1", "0/5/1", "64/5/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_configs(bad)


@pytest.mark.serve
def test_gpu_benchmark_smoke_on_the_cpu(tiny_run, reviews_dir, tmp_path):
    from benchmarks.gpu import main
    result = main(["--run", str(tiny_run), "--data", str(reviews_dir), "--device", "cpu",
                   "--quick", "--precision", "fp32", "--output", str(tmp_path),
                   "--concurrency", "1,4", "--duration", "1", "--warmup", "0.2",
                   "--inprocess-seconds", "0.2", "--batches", "2"])
    assert result["machine"]["device"] == "cpu"
    limit = result["inprocess"]
    assert set(limit["reviews_per_s_by_batch"]) == {1, 16} and limit["best_reviews_per_s"] > 0
    breakdown = result["breakdown"]
    assert set(breakdown["ms_per_call"]) == {"tokenize", "pad_copy", "forward", "serialise"}
    assert all(ms > 0 for ms in breakdown["ms_per_call"].values())
    assert sum(breakdown["share"].values()) == pytest.approx(1.0, abs=0.01)
    (system,) = result["systems"].values()
    assert [entry["concurrency"] for entry in system["levels"]] == [1, 4]
    assert all(entry["errors"] == 0 and entry["ok"] > 0 for entry in system["levels"])
    assert system["workers_ready"] == 1
    assert result["ratios"][system["name"]]["vs_inprocess"] > 0
    written = json.loads((tmp_path / "bench-gpu.json").read_text())
    assert written["breakdown"]["dominant"] in breakdown["ms_per_call"]
    assert f"| {system['name']} |" in (tmp_path / "bench-gpu.md").read_text()
