"""The benchmark harness: its maths (percentiles, summaries, ratios, target checks) as unit
tests, and a few-second smoke run against the tiny archived model on a real TorchServe and the
seed-style Flask baseline (loopback only). No timing assertions: numbers here mean nothing."""
import json

import pytest

from benchmarks.stats import check_targets, percentile, ratio, summarize


@pytest.mark.parametrize("q, expected", [(0, 1.0), (50, 2.5), (100, 4.0), (25, 1.75),
                                         (99, 3.97)])
def test_percentile_interpolates_linearly(q, expected):
    assert percentile([4, 1, 3, 2], q) == pytest.approx(expected)


def test_percentile_matches_numpy():
    numpy = pytest.importorskip("numpy")
    values = [0.013, 0.2, 0.05, 1.7, 0.3, 0.31, 0.02, 0.9, 0.44]
    for q in (50, 95, 99):
        assert percentile(values, q) == pytest.approx(float(numpy.percentile(values, q)))


def test_percentile_edge_cases():
    assert percentile([], 50) is None
    assert percentile([7], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_summarize_reports_throughput_and_ms_percentiles():
    summary = summarize([0.010, 0.020, 0.030, 0.040], errors=1, elapsed_s=2.0, reviews=4,
                        concurrency=4)
    assert summary["requests"] == 5 and summary["ok"] == 4 and summary["errors"] == 1
    assert summary["reviews_per_s"] == 2.0
    assert summary["p50_ms"] == 25.0 and summary["p99_ms"] == pytest.approx(39.7)
    empty = summarize([], errors=3, elapsed_s=1.0, reviews=0, concurrency=1)
    assert empty["reviews_per_s"] == 0.0 and empty["p50_ms"] is None


def test_ratio():
    assert ratio(30, 10) == 3.0
    assert ratio(1, 0) is None and ratio(None, 5) is None and ratio(5, None) is None


def system(*levels):
    return {"levels": [{"concurrency": c, "reviews_per_s": r, "p50_ms": p50, "p99_ms": p99}
                       for c, r, p50, p99 in levels]}


def test_check_targets_verdicts():
    served = system((1, 20.0, 40.0, 50.0), (16, 90.0, 170.0, 300.0))
    seed = system((1, 25.0, 35.0, 45.0), (16, 25.0, 600.0, 900.0))
    limit = {"best_reviews_per_s": 100.0, "batch1_p50_ms": 30.0}
    checks = {c["target"].split(" @")[0]: c for c in
              check_targets(served, seed, limit, 16, cold_start_s=12.0)}
    assert checks["throughput vs seed"]["value"] == pytest.approx(3.6)
    assert checks["throughput vs seed"]["met"] is True
    assert checks["throughput vs in-process limit"]["value"] == pytest.approx(0.9)
    assert checks["throughput vs in-process limit"]["met"] is True
    assert checks["p99 vs seed p99"]["met"] is True
    assert checks["idle p50 vs in-process batch-1 + 10 ms"]["met"] is True  # 40 <= 40
    assert checks["cold start (start to first prediction)"]["met"] is True
    slow = system((1, 10.0, 60.0, 70.0), (16, 50.0, 300.0, 1000.0))
    verdicts = [c["met"] for c in check_targets(slow, seed, limit, 16, cold_start_s=25.0)]
    assert verdicts == [False, False, False, False, False]


def test_check_targets_missing_inputs_are_not_measured():
    checks = check_targets(system((16, 90.0, 1.0, 2.0)), {"levels": []}, None, 16, None)
    assert [c["met"] for c in checks] == [None] * 5


def test_ratios_and_markdown_from_a_result():
    from benchmarks.run import markdown, ratios
    result = {
        "inprocess": {"fp32": {"precision": "fp32", "best_reviews_per_s": 40.0, "best_batch": 16,
                               "reviews_per_s_by_batch": {1: 20.0, 16: 40.0},
                               "batch1_p50_ms": 30.0}},
        "systems": {
            "seed": {"kind": "seed", "precision": "fp32", "cold_start_s": 3.0,
                     **system((16, 10.0, 900.0, 1600.0))},
            "ts-fp32": {"kind": "torchserve", "precision": "fp32", "batchSize": 16,
                        "maxBatchDelay": 10, "workers": 1, "threads_per_worker": 0,
                        "cold_start_s": 9.0, **system((16, 36.0, 400.0, 800.0))},
        },
    }
    for entry in result["systems"].values():
        for level in entry["levels"]:
            level.update(p95_ms=level["p99_ms"], errors=0)
    table = ratios(result)["systems"]
    assert table["ts-fp32"]["vs_seed"] == 3.6 and table["ts-fp32"]["vs_inprocess"] == 0.9
    assert table["ts-fp32"]["p99_vs_seed"] == 0.5
    result["ratios"] = ratios(result)
    text = markdown(result)
    assert "| ts-fp32 | 36.0 | 3.60 | 0.90 | 0.50 |" in text


def test_load_is_only_sent_to_loopback():
    from benchmarks.loadgen import check_loopback
    assert check_loopback("http://127.0.0.1:8080/predictions/bert_sentiment")
    assert check_loopback("http://localhost:1/x")
    for url in ("http://10.0.0.1:8080/", "http://example.com/", "http://0.0.0.0:80/"):
        with pytest.raises(ValueError):
            check_loopback(url)


@pytest.mark.serve
def test_smoke_load_against_tiny_torchserve_and_seed(tiny_archive, tiny_run, tmp_path):
    from harness.server import SeedBaseline, TorchServe
    from benchmarks.loadgen import load_levels
    from tests.conftest import synthetic_reviews
    texts = synthetic_reviews(30, seed=9)["text"].tolist()
    with TorchServe(tmp_path / "ts", tiny_archive.parent) as server:
        assert server.cold_start(timeout=180) > 0
        results = load_levels(server.url, texts, [1, 4], duration=1.0, warmup=0.3)
    with SeedBaseline(tmp_path / "seed", tiny_run) as seed:
        seed.cold_start(timeout=120)
        results += load_levels(seed.url, texts, [2], duration=1.0, warmup=0.0, max_requests=20)
    assert [r["concurrency"] for r in results] == [1, 4, 2]
    for entry in results:
        assert entry["errors"] == 0 and entry["ok"] > 0, entry
        assert entry["reviews_per_s"] > 0
        assert entry["p50_ms"] <= entry["p95_ms"] <= entry["p99_ms"]
    assert results[2]["requests"] <= 20


@pytest.mark.serve
def test_quick_benchmark_run_end_to_end(tiny_run, reviews_dir, tmp_path):
    from benchmarks.run import main
    result = main(["--run", str(tiny_run), "--data", str(reviews_dir), "--output",
                   str(tmp_path / "out"), "--quick", "--precision", "fp32", "--concurrency", "2",
                   "--duration", "1", "--warmup", "0.2", "--inprocess-seconds", "0.2",
                   "--batch-sizes", "1,4", "--accuracy-samples", "24"])
    assert set(result["systems"]) == {"seed", "ts-fp32", "ts-openvino"}
    assert set(result["inprocess"]) == {"fp32", "openvino"}  # the limit is the best runtime
    assert result["targets"]["limit"] in result["inprocess"]
    for name in ("ts-fp32", "ts-openvino"):
        assert result["systems"][name]["levels"][0]["errors"] == 0
    assert {c["target"].split(" @")[0] for c in result["targets"]["checks"]} >= {
        "throughput vs seed", "p99 vs seed p99"}
    # accuracy of what was served (fp32 the reference), not of precisions nobody benchmarked
    assert set(result["accuracy"]) == {"fp32", "openvino"}
    assert result["accuracy"]["openvino"]["agreement_with_fp32"] >= 0.95
    written = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert written["ratios"]["systems"]["ts-fp32"]["vs_seed"] is not None
    assert (tmp_path / "out" / "bench.png").stat().st_size > 0
    assert "| ts-fp32 |" in (tmp_path / "out" / "bench.md").read_text()
