"""The int8 OpenVINO model (training/quantize.py): written by training and by
`python -m training.quantize`, checked against fp32 on the validation carve, kept only when it
agrees, archived for the openvino runtime, and served by `cpu_precision: auto` on a CPU without
native bf16 — through a stock-config TorchServe as a user runs it."""
import json
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from harness.tools import module
from tests.conftest import REPO, predict_once, synthetic_reviews

ov = module("openvino", "a dependency in pyproject.toml")
module("nncf", "a dependency in pyproject.toml")

INT8_NAMES = {"openvino_model_int8.xml", "openvino_model_int8.bin"}


def native_bf16() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def native_int8() -> bool:
    from handler.cpus import native_int8 as has_int8_dot_products
    return has_int8_dot_products()


@pytest.fixture(scope="module")
def int8_run(tiny_run, reviews_dir, tmp_path_factory):
    """A copy of the tiny run quantized with the CLI a user runs on an existing run (agreement
    threshold 0: the tiny model's few validation reviews decide nothing here)."""
    from training.quantize import main
    run = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("openvino_model_int8.*",
                                                                  "checkpoints"))
    report = main([str(run), "--data", str(reviews_dir), "--min-agreement", "0",
                   "--max-accuracy-drop", "1", "--calibration-reviews", "40"])
    assert report["kept"] and report["calibration_reviews"] == 40
    return run


def texts(count=32, seed=11):
    return synthetic_reviews(count, seed=seed)["text"].tolist()


def scored_from_the_files(run, data) -> dict:
    """The int8 check done again from what the run holds: its int8 IR's and its f32 model's
    labels (OpenVINO f32, the labels of torch fp32) on the validation carve, taken from the data
    as training carved it."""
    from transformers import AutoConfig, AutoTokenizer

    from handler.encoding import EncodingSettings
    from handler.openvino_runtime import OpenVINOModel
    from training.data import load_reviews
    from training.scoring import score_texts
    meta = json.loads((run / "metrics.json").read_text())
    splits, _ = load_reviews(str(data), meta["validation_size"], meta.get("seed", 42))
    texts, labels = list(splits["validation"]["text"]), torch.tensor(splits["validation"]["label"])
    config, tokenizer = AutoConfig.from_pretrained(run), AutoTokenizer.from_pretrained(run)
    int8, fp32 = (score_texts(OpenVINOModel.load(run, config, threads=1, precision=precision,
                                                 tokenizer=tokenizer),
                              tokenizer, texts, EncodingSettings.load(run)).logits.argmax(-1)
                  for precision in ("int8", "fp32"))
    return {"reviews": len(texts), "accuracy": (int8 == labels).float().mean().item(),
            "fp32_accuracy": (fp32 == labels).float().mean().item(),
            "agreement_with_fp32": (int8 == fp32).float().mean().item()}


def test_training_quantizes_and_reports_the_check(tiny_run, reviews_dir):
    """`python -m training` (int8 on by default) writes the report into metrics.json, the model
    files exist exactly when it was kept, and a kept model scores what the report says."""
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    report = metrics["int8"]
    assert report["reviews"] == 24  # the tiny run's whole validation carve
    assert report["fp32_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert (report["min_agreement"], report["max_accuracy_drop"]) == (0.995, 0.001)
    # fractions of 24 reviews; where int8 agrees with fp32 both are right or both wrong
    for key in ("accuracy", "fp32_accuracy", "agreement_with_fp32"):
        assert report[key] * 24 == pytest.approx(round(report[key] * 24), abs=0.01), report
    assert abs(report["accuracy"] - report["fp32_accuracy"]) <= \
        1 - report["agreement_with_fp32"] + 1e-4, report
    assert report["kept"] == (report["agreement_with_fp32"] >= report["min_agreement"] and
                              report["fp32_accuracy"] - report["accuracy"] <=
                              report["max_accuracy_drop"] + 1e-9)  # the gate applied
    assert {p.name for p in tiny_run.glob("openvino_model_int8.*")} == \
        (INT8_NAMES if report["kept"] else set())
    if report["kept"]:  # whether it is depends on how the tiny model came out
        again = scored_from_the_files(tiny_run, reviews_dir)
        assert {key: report[key] for key in again} == pytest.approx(again, abs=1e-4)


def test_cli_report_matches_what_it_wrote(int8_run, reviews_dir):
    """The report's numbers are the kept int8 model's, scored again here from its files."""
    report = json.loads((int8_run / "metrics.json").read_text())["int8"]
    assert {p.name for p in int8_run.glob("openvino_model_int8.*")} == INT8_NAMES
    assert report["reviews"] == 24 and report["min_agreement"] == 0
    again = scored_from_the_files(int8_run, reviews_dir)
    assert {key: report[key] for key in again} == pytest.approx(again, abs=1e-4)
    # the IR holds int8 weights: far smaller than the f32 safetensors
    assert (int8_run / "openvino_model_int8.bin").stat().st_size < \
        0.6 * (int8_run / "model.safetensors").stat().st_size


def test_a_model_that_does_not_agree_is_not_kept_and_a_stale_one_goes(int8_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    from handler.runtime import TorchRuntime
    from training.scoring import score_texts
    from training.quantize import quantize_run
    run = tmp_path / "run"
    shutil.copytree(int8_run, run)
    model = AutoModelForSequenceClassification.from_pretrained(run).eval()
    tokenizer, encoding = AutoTokenizer.from_pretrained(run), EncodingSettings.load(run)
    check = synthetic_reviews(16, seed=4)
    fp32 = score_texts(TorchRuntime(model), tokenizer, check["text"].tolist(),
                       encoding).probabilities()
    flipped = fp32.flip(-1)  # a reference whose every label the int8 model contradicts
    report = quantize_run(run, model, tokenizer, encoding, texts(16), check["text"].tolist(),
                          check["label"].tolist(), flipped, min_agreement=0.99)
    assert not report["kept"] and report["agreement_with_fp32"] < 0.99
    assert not list(run.glob("openvino_model_int8.*"))
    # agreeing is not enough: an int8 model less accurate than fp32 by more than allowed goes
    # too (a reference that knows every label, against labels no text predicts: 32 random bits)
    import random
    rng = random.Random(5)
    labels = [rng.randrange(2) for _ in range(32)]
    knows = torch.nn.functional.one_hot(torch.tensor(labels), 2).float()
    report = quantize_run(run, model, tokenizer, encoding, texts(16), texts(32, seed=6), labels,
                          knows, min_agreement=0.0, max_accuracy_drop=0.1)
    assert report["fp32_accuracy"] == 1.0 and report["accuracy"] < 0.9 and not report["kept"]


def test_runtime_serves_int8_close_to_fp32(int8_run):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    from handler.openvino_runtime import OpenVINOModel
    from handler.runtime import TorchRuntime
    from training.scoring import score_texts
    config = AutoConfig.from_pretrained(int8_run)
    tokenizer, encoding = AutoTokenizer.from_pretrained(int8_run), EncodingSettings.load(int8_run)
    fp32 = TorchRuntime(AutoModelForSequenceClassification.from_pretrained(int8_run).eval())
    reference = score_texts(fp32, tokenizer, texts(), encoding).probabilities()
    int8 = OpenVINOModel.load(int8_run, config, threads=1, precision="int8")
    assert int8.precision == "int8"
    # with native bf16 `auto` serves the f32 model in bf16: the run has no f32 IR, so it converts
    auto = OpenVINOModel.load(int8_run, config, threads=1, precision="auto", tokenizer=tokenizer)
    assert auto.precision == ("bf16" if native_bf16() else "int8" if native_int8() else "f32")
    got = score_texts(int8, tokenizer, texts(), encoding).probabilities()
    assert got.shape == reference.shape
    # on average: a text the tiny model leaves near its decision boundary moves most
    assert (got - reference).abs().mean() < 0.05
    assert not torch.equal(got, score_texts(OpenVINOModel.load(
        int8_run, config, threads=1, precision="fp32", tokenizer=tokenizer), tokenizer, texts(),
        encoding).probabilities())  # the int8 model really is another model


def test_int8_asked_for_without_the_model_is_a_clear_error(tiny_model, tmp_path):
    from handler.openvino_runtime import OpenVINOModel, save_ir
    model, tokenizer, _ = tiny_model
    save_ir(model, tokenizer, tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m training.quantize"):
        OpenVINOModel.load(tmp_path, model.config, threads=1, precision="int8")


def test_archive_carries_int8_for_the_openvino_runtime_only(int8_run, tmp_path):
    import yaml

    from training.archive import archive_version
    from training.archive import main as archive
    shipped = REPO / "handler" / "model-config.yaml"
    mar = archive([str(int8_run), "--model-store", str(tmp_path / "ov")])
    assert INT8_NAMES <= set(zipfile.ZipFile(mar).namelist())
    settings = yaml.safe_load(shipped.read_text())
    settings["handler"]["cpu_runtime"] = "torch"
    config = tmp_path / "torch.yaml"
    config.write_text(yaml.safe_dump(settings))
    mar = archive([str(int8_run), "--model-store", str(tmp_path / "torch"), "--config-file",
                   str(config)])
    assert not INT8_NAMES & set(zipfile.ZipFile(mar).namelist())
    # the int8 weights are part of what produced the answers: another model, another version
    before = archive_version(int8_run, shipped)
    (int8_run / "openvino_model_int8.bin").rename(tmp_path / "moved.bin")
    try:
        assert archive_version(int8_run, shipped) != before
    finally:
        (tmp_path / "moved.bin").rename(int8_run / "openvino_model_int8.bin")


@pytest.mark.serve
def test_stock_config_serves_int8_through_torchserve(int8_run, tmp_path):
    """The shipped model-config.yaml (cpu_runtime openvino, cpu_precision auto) as `make up`
    archives it: on a CPU without native bf16 the worker serves the int8 model. Its answers are
    the int8 model's run offline (calibrated the same way), and on average close to
    training.evaluate's fp32 ones (how close each text is depends on how the tiny model came
    out; the agreement gate judges int8 on real reviews)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    from handler.calibration import load_calibrator
    from handler.openvino_runtime import OpenVINOModel
    from handler.runtime import TorchRuntime
    from training.archive import main as archive
    from training.scoring import score_texts
    mar = archive([str(int8_run), "--model-store", str(tmp_path / "store")])
    batch = texts(24, seed=2)
    tokenizer, encoding = AutoTokenizer.from_pretrained(int8_run), EncodingSettings.load(int8_run)
    calibrator = load_calibrator(int8_run)
    fp32 = score_texts(TorchRuntime(AutoModelForSequenceClassification.from_pretrained(
        int8_run).eval()), tokenizer, batch, encoding).probabilities(calibrator)
    auto = OpenVINOModel.load(int8_run, AutoConfig.from_pretrained(int8_run), threads=1,
                              precision="auto", tokenizer=tokenizer)
    offline = score_texts(auto, tokenizer, batch, encoding).probabilities(calibrator)
    got, log = predict_once(mar, batch, tmp_path / "ts")
    expected = "bf16" if native_bf16() else "int8" if native_int8() else "f32"
    assert f"OpenVINO {ov.__version__}: {expected} inference precision" in log
    served = torch.tensor([answer["probabilities"]["positive"] for answer in got])
    # (one offline thread against the worker's: bf16 sums in another order round otherwise)
    assert served.tolist() == pytest.approx(offline[:, 1].tolist(),
                                            abs=1e-3 if expected == "int8" else 1e-2)
    assert (served - fp32[:, 1]).abs().mean() < 0.1


def test_benchmark_default_is_what_the_handler_serves(int8_run, reviews_dir, tmp_path):
    """`make bench` with no --precision benchmarks the configuration the shipped
    model-config.yaml would serve from that run on this CPU: `python -m benchmarks.run`, asked
    for no system, records which in bench.json."""
    without_int8 = tmp_path / "without-int8"
    shutil.copytree(int8_run, without_int8, ignore=shutil.ignore_patterns("openvino_model_int8.*"))

    def benchmarked(run):
        output = tmp_path / f"bench-{run.name}"
        done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--run", str(run), "--data",
                               str(reviews_dir), "--output", str(output), "--quick",
                               "--systems", "none"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((output / "bench.json").read_text())["settings"]["default_precision"]

    assert benchmarked(int8_run) == ("openvino-int8" if native_int8() and not native_bf16()
                                     else "openvino")
    assert benchmarked(without_int8) == "openvino"


def test_model_card_reports_the_int8_check(int8_run):
    from training.model_card import render
    metrics = json.loads((int8_run / "metrics.json").read_text())
    card = render(metrics)
    assert "## int8 model" in card
    assert f"{100 * metrics['int8']['agreement_with_fp32']:.2f} %" in card
    metrics["int8"]["kept"] = False
    assert "Not shipped" in render(metrics)
