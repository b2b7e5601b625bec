"""OpenVINO as the CPU runtime (handler/openvino_runtime.py): the same probabilities as torch
fp32 on the tiny model, in input order whatever the lengths, through the converted IR and the
compiled-model cache, and through TorchServe with `cpu_runtime: openvino`."""
import re
import subprocess
import sys

import pytest
import torch

from handler.settings import HandlerSettings
from harness.tools import module
from tests.conftest import REPO, predict_once, synthetic_reviews

SERVING = HandlerSettings()  # the handler's own micro-batching and padding

ov = module("openvino", "a dependency in pyproject.toml")


def reviews(count: int, seed: int) -> list[str]:
    return synthetic_reviews(count, seed=seed)["text"].tolist()


def mixed_lengths(count: int = 40) -> list[str]:
    """Reviews from 1 to ~60 words, shuffled: micro-batches must cut and reorder them."""
    texts = reviews(count, seed=7)
    return [" ".join([text] * (1 + i % 3)) if i % 5 else "great" for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def ir_dir(tiny_model, tmp_path_factory):
    from handler.openvino_runtime import save_ir
    model, tokenizer, _ = tiny_model
    directory = tmp_path_factory.mktemp("openvino-ir")
    save_ir(model, tokenizer, directory)
    return directory


def probabilities(runtime, tokenizer, encoding, texts, token_budget=SERVING.token_budget,
                  max_batch=SERVING.micro_batch_size, temperature=1.0):
    """handler.inference.score over a runtime, or over a torch model as TorchRuntime fp32."""
    from handler.calibration import TemperatureCalibrator
    from handler.encoding import encode_reviews
    from handler.inference import score
    from handler.runtime import TorchRuntime
    if isinstance(runtime, torch.nn.Module):
        runtime = TorchRuntime(runtime)
    encoded = encode_reviews(tokenizer, texts, encoding)
    return score(runtime, encoded, tokenizer.pad_token_id, token_budget, max_batch,
                 SERVING.pad_to_multiple_of, TemperatureCalibrator(temperature))


def load(directory, config, precision="fp32", cache_dir=None, tokenizer=None):
    from handler.openvino_runtime import OpenVINOModel
    return OpenVINOModel.load(directory, config, threads=1, precision=precision,
                              cache_dir=cache_dir, tokenizer=tokenizer)


def test_f32_matches_torch_fp32_in_input_order(tiny_model, ir_dir):
    model, tokenizer, encoding = tiny_model
    runtime = load(ir_dir, model.config)
    assert runtime.precision == "f32"
    texts = mixed_lengths()
    expected = probabilities(model, tokenizer, encoding, texts, temperature=1.7)
    # small micro-batches over length-sorted texts: order must be restored
    got = probabilities(runtime, tokenizer, encoding, texts, token_budget=96, max_batch=4,
                        temperature=1.7)
    assert got.shape == expected.shape == (len(texts), 2)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # each text alone gives its own row of the batched answer
    for i in (0, 5, 17, len(texts) - 1):
        alone = probabilities(runtime, tokenizer, encoding, [texts[i]], temperature=1.7)
        torch.testing.assert_close(alone[0], got[i], atol=1e-5, rtol=0)


def test_converted_at_load_without_ir_matches_the_ir(tiny_run, tiny_model, ir_dir):
    """An archive without the IR: the worker converts the HF weights itself."""
    model, tokenizer, encoding = tiny_model
    from handler.openvino_runtime import IR_FILE
    assert not (tiny_run / IR_FILE).exists()
    converted = load(tiny_run, model.config, tokenizer=tokenizer)
    from_ir = load(ir_dir, model.config)
    texts = reviews(12, seed=3)
    torch.testing.assert_close(probabilities(converted, tokenizer, encoding, texts),
                               probabilities(from_ir, tokenizer, encoding, texts), atol=1e-6,
                               rtol=0)


def test_bf16_hint_only_where_the_cpu_has_it(tiny_model, ir_dir):
    from handler.openvino_runtime import resolve_precision
    fast = dict(fast_int8=True)
    assert resolve_precision("bf16", ["FP32", "INT8"], has_int8=False, **fast) == "f32"
    assert resolve_precision("bf16", ["FP32", "BF16"], has_int8=False, **fast) == "bf16"
    assert resolve_precision("fp32", ["FP32", "BF16"], has_int8=True, **fast) == "f32"
    # auto: native bf16 first, then the archive's int8 model where the CPU has int8 dot
    # products (VNNI/AMX: without them int8 is slower than f32), then f32
    assert resolve_precision("auto", ["FP32", "BF16"], has_int8=True, **fast) == "bf16"
    assert resolve_precision("auto", ["FP32", "INT8"], has_int8=True, **fast) == "int8"
    assert resolve_precision("auto", ["FP32", "INT8"], has_int8=True, fast_int8=False) == "f32"
    assert resolve_precision("auto", ["FP32", "INT8"], has_int8=False, **fast) == "f32"
    assert resolve_precision("int8", ["FP32", "BF16"], has_int8=True, **fast) == "int8"
    assert resolve_precision("int8", ["FP32", "INT8"], has_int8=True, fast_int8=False) == "int8"
    with pytest.raises(FileNotFoundError, match="training.quantize"):
        resolve_precision("int8", ["FP32"], has_int8=False, **fast)
    with pytest.raises(ValueError, match="cpu_runtime torch"):
        resolve_precision("fp16", ["FP32"], has_int8=False, **fast)
    model, tokenizer, encoding = tiny_model
    runtime = load(ir_dir, model.config, precision="bf16")
    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert runtime.precision == ("bf16" if native else "f32")
    texts = mixed_lengths()
    expected = probabilities(model, tokenizer, encoding, texts).argmax(-1)
    got = probabilities(runtime, tokenizer, encoding, texts)
    assert (got.argmax(-1) == expected).float().mean() >= 0.95
    torch.testing.assert_close(got, probabilities(model, tokenizer, encoding, texts),
                               atol=0.05 if native else 1e-4, rtol=0)


def test_compiled_model_cache_is_written_then_reused(tiny_model, ir_dir, tmp_path):
    model, tokenizer, encoding = tiny_model
    cache = tmp_path / "cache"
    first = load(ir_dir, model.config, cache_dir=cache)
    blobs = {path: path.stat().st_mtime_ns for path in cache.rglob("*") if path.is_file()}
    assert blobs, "no compiled model in the cache directory"
    second = load(ir_dir, model.config, cache_dir=cache)
    assert {path: path.stat().st_mtime_ns for path in cache.rglob("*") if path.is_file()} == blobs
    texts = reviews(8, seed=5)
    torch.testing.assert_close(probabilities(second, tokenizer, encoding, texts),
                               probabilities(first, tokenizer, encoding, texts), atol=0, rtol=0)


def test_handler_runtime_setting(tiny_run, tiny_model):
    """cpu_runtime openvino in the handler: same answers as cpu_runtime torch (fp32), an
    unknown runtime is refused."""
    from handler.predictor import Predictor
    texts = mixed_lengths(16)
    torch_side = Predictor(tiny_run, "cpu", HandlerSettings(cpu_precision="fp32"))
    ov_side = Predictor(tiny_run, "cpu", HandlerSettings(cpu_precision="fp32",
                                                         cpu_runtime="openvino"))
    assert ov_side.runtime.precision == "f32" and not hasattr(ov_side.runtime, "model")
    assert ov_side.explainer is None  # torch weights only when explaining
    (expected, _), (got, _) = torch_side.predict(texts), ov_side.predict(texts)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for mine, theirs in zip(got, expected):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
    with pytest.raises(ValueError, match="cpu_runtime"):
        Predictor(tiny_run, "cpu", HandlerSettings(cpu_runtime="tensorflow"))


@pytest.mark.serve
def test_served_openvino_archive_answers_like_torch(tiny_run, tmp_path):
    """An archive with cpu_runtime: openvino (IR converted at archive time) on TorchServe
    answers like the torch runtime (fp32) on the same run."""
    import zipfile

    import yaml

    from training.archive import main as archive
    settings = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    settings["handler"].update(cpu_runtime="openvino", cpu_precision="fp32")
    config = tmp_path / "model-config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    mar = archive([str(tiny_run), "--model-store", str(tmp_path / "store"), "--config-file",
                   str(config)])
    assert "openvino_model.xml" in zipfile.ZipFile(mar).namelist()
    texts = mixed_lengths(24)
    from handler.predictor import Predictor
    expected, _ = Predictor(tiny_run, "cpu", HandlerSettings(cpu_runtime="torch",
                                                             cpu_precision="fp32")).predict(texts)
    got, log = predict_once(mar, texts, tmp_path / "ts")
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for mine, theirs in zip(got, expected):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
    assert "OpenVINO" in log and "f32 inference precision" in log
    assert "converted the HF model" not in log  # the archive's IR, not a conversion at start


def test_start_benchmark_times_the_three_ways_a_worker_gets_its_model(tiny_run):
    """`python -m benchmarks.openvino_start` as a user runs it: a time for each way a worker
    gets its model, and the run directory left as it was."""
    before = sorted(path.name for path in tiny_run.iterdir())
    done = subprocess.run([sys.executable, "-m", "benchmarks.openvino_start", "--run",
                           str(tiny_run), "--repeat", "1"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {name: (float(seconds), runs.split(", ")) for name, seconds, runs in re.findall(
        r"^(.+?) +model ready in ([\d.]+) s \(imports [\d.]+ s\), runs \[([^\]]*)\]$",
        done.stdout, re.M)}
    assert set(rows) == {"convert at worker start", "IR from the archive",
                         "IR + compiled-model cache"}, done.stdout
    assert all(seconds > 0 and len(runs) == 1 for seconds, runs in rows.values()), rows
    assert sorted(path.name for path in tiny_run.iterdir()) == before
