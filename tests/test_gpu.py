"""The GPU path on a real NVIDIA GPU: the handler in real TorchServe workers on CUDA (fp16 and
bf16 answers, per-request errors, one worker per GPU with its gpu_id, two workers sharing one
GPU), the accuracy of fp16/bf16 against fp32 on 2,000 held-out IMDB reviews, the out-of-memory
path under a capped memory fraction, and a device-side assert replacing the worker.

Skipped where torch sees no CUDA device; `make test-gpu` runs this file on a GPU machine. The
accuracy check needs a trained run (GPU_TEST_RUN, default runs/quick) and the IMDB data
(IMDB_DATA_DIR, default ../shared/data/imdb) and skips, saying which is missing, without them.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from harness.http import JSON, TEXT, post
from harness.server import TorchServe
from harness.worker import load_handler
from tests.conftest import FILLER, NEGATIVE, POSITIVE, REPO, SPECIAL, synthetic_reviews

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: torch.cuda.is_available() is False here "
                              "(run `make test-gpu` on a machine with an NVIDIA GPU)"),
]
MiB = 1 << 20
LOADED = re.compile(r"loaded \S+ on (cuda:\d+), precision (\w+)")


def build_archive(run_dir: Path, store: Path, workers: int = 1, **handler_settings) -> Path:
    """bert_sentiment.mar of `run_dir` with the shipped model-config.yaml, `workers` workers
    and the given handler settings (training.archive --config-file)."""
    import yaml

    from training.archive import main
    settings = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    settings.update(minWorkers=workers, maxWorkers=workers)
    settings["handler"].update(handler_settings)
    store.mkdir(parents=True, exist_ok=True)
    config = store.parent / f"{store.name}-model-config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return main([str(run_dir), "--model-store", str(store), "--config-file", str(config)])


def ready_workers(server) -> list[dict]:
    return [w for w in server.describe()["workers"] if w["status"] == "READY"]


@contextmanager
def served(workdir: Path, store: Path, gpus: int, workers: int = 1, **overrides):
    """TorchServe on loopback told it has `gpus` GPUs, once `workers` workers are READY."""
    with TorchServe(workdir, store, number_of_gpu=gpus, **overrides) as server:
        server.wait_ready(timeout=300)
        deadline = time.monotonic() + 300
        while len(ready_workers(server)) < workers:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        yield server


def loaded_devices(server) -> list[tuple[str, str]]:
    """(device, precision) of every model load the workers logged."""
    return LOADED.findall(server.log("model_log"))


def offline_fp32(run_dir: Path, texts: list[str]) -> list[float]:
    """P(positive) from the serving code path in fp32 on the CPU: the reference."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    from handler.calibration import load_calibrator
    from handler.runtime import TorchRuntime
    from training.scoring import score_texts
    model = TorchRuntime(AutoModelForSequenceClassification.from_pretrained(run_dir).eval())
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    probabilities = score_texts(model, tokenizer, texts, EncodingSettings.load(run_dir)
                                ).probabilities(load_calibrator(run_dir))
    return probabilities[:, 1].tolist()


def half_precisions():
    bf16 = pytest.mark.skipif(torch.cuda.is_available() and not torch.cuda.is_bf16_supported(),
                              reason="this GPU has no bf16")
    return ["fp16", pytest.param("bf16", marks=bf16)]


# -- the handler in TorchServe workers on CUDA ----------------------------------------------

@pytest.fixture(scope="module", params=half_precisions())
def gpu_server(request, tiny_run, tmp_path_factory):
    """One worker on GPU 0 at the given precision (the tiny fine-tuned model)."""
    workdir = tmp_path_factory.mktemp(f"ts-gpu-{request.param}")
    build_archive(tiny_run, workdir / "store", gpu_precision=request.param)
    with served(workdir / "ts", workdir / "store", gpus=1) as server:
        server.precision = request.param
        yield server


@pytest.mark.serve
def test_half_precision_answers_match_fp32(gpu_server, tiny_run):
    texts = synthetic_reviews(48, seed=21)["text"].tolist()
    response = post(gpu_server, json.dumps({"texts": texts}), JSON)
    assert response.status_code == 200, response.text
    served = [answer["probabilities"]["positive"] for answer in response.json()]
    reference = offline_fp32(tiny_run, texts)
    tolerance = 0.01 if gpu_server.precision == "fp16" else 0.03  # 10 vs 7 mantissa bits
    assert served == pytest.approx(reference, abs=tolerance)
    clear = [i for i, p in enumerate(reference) if abs(p - 0.5) > 2 * tolerance]
    assert [served[i] > 0.5 for i in clear] == [reference[i] > 0.5 for i in clear]
    assert loaded_devices(gpu_server) == [("cuda:0", gpu_server.precision)]
    assert all(worker["gpu"] for worker in gpu_server.describe()["workers"])


@pytest.mark.serve
def test_bad_requests_fail_alone_in_a_gpu_batch(gpu_server):
    """Valid and invalid requests arrive together (one handler call): each invalid one gets
    its own 4xx, every valid one its 200 with the answer it gets alone."""
    texts = synthetic_reviews(12, seed=22)["text"].tolist()
    bad = [(b"", TEXT, 400), (b"great \xff\xfe film", TEXT, 400),
           (json.dumps({"texts": ["good"] * 65}).encode(), JSON, 413),
           (("word " * 5000).encode(), TEXT, 413), (b"{not json", JSON, 400)]
    requests_ = [(text.encode(), TEXT, 200) for text in texts] + bad
    with ThreadPoolExecutor(max_workers=len(requests_)) as pool:
        responses = list(pool.map(lambda r: post(gpu_server, r[0], r[1]), requests_))
    assert [r.status_code for r in responses] == [code for _, _, code in requests_]
    for response in responses[len(texts):]:
        assert response.json()["code"] == response.status_code
    alone = [post(gpu_server, text).json()["probabilities"]["positive"] for text in texts]
    together = [r.json()["probabilities"]["positive"] for r in responses[:len(texts)]]
    # other batch shapes may pick other kernels: a last-bit difference, larger in bf16
    assert together == pytest.approx(alone, abs=2e-3 if gpu_server.precision == "fp16" else 1e-2)


@pytest.mark.serve
def test_one_worker_per_gpu_each_on_its_gpu_id(tiny_run, tmp_path):
    """TorchServe hands worker i gpu_id i; the handler must put the model there
    (torch.cuda.set_device), not on cuda:0 for all."""
    gpus = torch.cuda.device_count()
    build_archive(tiny_run, tmp_path / "store", workers=gpus, gpu_precision="fp16")
    with served(tmp_path / "ts", tmp_path / "store", gpus=gpus, workers=gpus) as server:
        workers = ready_workers(server)
        assert len(workers) == gpus and all(worker["gpu"] for worker in workers)
        assert len({worker["pid"] for worker in workers}) == gpus
        devices = sorted(device for device, _ in loaded_devices(server))
        assert devices == sorted(f"cuda:{i}" for i in range(gpus))
        texts = synthetic_reviews(8 * gpus, seed=23)["text"].tolist()
        with ThreadPoolExecutor(max_workers=len(texts)) as pool:
            codes = [r.status_code for r in pool.map(lambda t: post(server, t), texts)]
        assert codes == [200] * len(texts)


@pytest.mark.serve
def test_two_workers_share_one_gpu(tiny_run, tmp_path):
    build_archive(tiny_run, tmp_path / "store", workers=2, gpu_precision="fp16")
    with served(tmp_path / "ts", tmp_path / "store", gpus=1, workers=2) as server:
        workers = ready_workers(server)
        assert len(workers) == 2 and workers[0]["pid"] != workers[1]["pid"]
        assert [device for device, _ in loaded_devices(server)] == ["cuda:0", "cuda:0"]
        texts = synthetic_reviews(64, seed=24)["text"].tolist()
        with ThreadPoolExecutor(max_workers=64) as pool:
            responses = list(pool.map(lambda t: post(server, t), texts))
        assert [r.status_code for r in responses] == [200] * 64
        reference = offline_fp32(tiny_run, texts)
        assert [r.json()["probabilities"]["positive"] for r in responses] == pytest.approx(
            reference, abs=0.01)
        assert len(ready_workers(server)) == 2


# -- accuracy of fp16 / bf16 against fp32 on held-out IMDB reviews -------------------------

ACCURACY_SAMPLES = 2000


@pytest.fixture(scope="module")
def trained_run():
    run = Path(os.environ.get("GPU_TEST_RUN") or REPO / "runs" / "quick")
    data = Path(os.environ.get("IMDB_DATA_DIR") or REPO.parent / "shared" / "data" / "imdb")
    if not (run / "metrics.json").is_file():
        pytest.skip(f"no trained run at {run} (train one with `make train`, or set "
                    "GPU_TEST_RUN to a run directory)")
    if not (data / "train.parquet").is_file():
        pytest.skip(f"no IMDB data at {data} (set IMDB_DATA_DIR to a directory with "
                    "train.parquet)")
    return run, data


def served_predictions(run: Path, texts: list[str], precision: str) -> torch.Tensor:
    """Labels from the handler itself on GPU 0 at `precision` (weights cast as it serves)."""
    handler = load_handler(run, "cuda:0", gpu_precision=precision)
    try:
        return torch.cat([handler.predictor.probabilities(texts[i:i + 256])[0].argmax(-1)
                          for i in range(0, len(texts), 256)])
    finally:
        del handler
        torch.cuda.empty_cache()


def test_half_precision_accuracy_on_held_out_reviews(trained_run, tmp_path):
    from training.data import load_reviews, take
    from training.evaluate import main as evaluate
    run, data = trained_run
    meta = json.loads((run / "metrics.json").read_text())
    splits, _ = load_reviews(str(data), meta.get("validation_size", 2000), meta.get("seed", 42))
    held_out = take(splits["validation"], ACCURACY_SAMPLES, meta.get("seed", 42))
    texts, labels = list(held_out["text"]), list(held_out["label"])
    if len(texts) < ACCURACY_SAMPLES:
        pytest.skip(f"the run's validation split has {len(texts)} reviews, fewer than "
                    f"{ACCURACY_SAMPLES}")
    labels = torch.tensor(labels)
    reference = served_predictions(run, texts, "fp32")
    accuracy = {"fp32": (reference == labels).float().mean().item()}
    precisions = ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    for precision in precisions:
        predicted = served_predictions(run, texts, precision)
        accuracy[precision] = (predicted == labels).float().mean().item()
        agreement = (predicted == reference).float().mean().item()
        print(f"\n{precision}: accuracy {accuracy[precision]:.4f} (fp32 {accuracy['fp32']:.4f}),"
              f" agreement with fp32 {agreement:.4f} on {len(texts)} reviews")
        assert abs(accuracy[precision] - accuracy["fp32"]) * 100 <= 0.1
        assert agreement >= 0.995
    # the command-line evaluation at fp16 scores the same reviews the same way
    report = evaluate(["--model", str(run), "--data", str(data), "--split", "validation",
                       "--max-samples", str(ACCURACY_SAMPLES), "--precision", "fp16",
                       "--output", str(tmp_path / "eval-fp16.json")])
    assert report["inference_precision"] == "fp16" and report["samples"] == ACCURACY_SAMPLES
    assert abs(report["accuracy"] - accuracy["fp16"]) * 100 <= 0.1


# -- out of memory: a capped memory fraction, a large request split and answered ------------

BIG_BATCH, BIG_LENGTH = 256, 512
BIG_SETTINGS = dict(gpu_precision="fp16", micro_batch_size=BIG_BATCH,
                    token_budget=BIG_BATCH * BIG_LENGTH, max_texts_per_request=BIG_BATCH)
HEADROOM = 256 * MiB  # above the settled worker: room for a few texts, not for 256 x 512 tokens


@pytest.fixture(scope="module")
def wide_run(tiny_run, tmp_path_factory):
    """An untrained BERT (hidden 512, 4 layers, 512 positions) saved as a run directory, so
    that 256 reviews of 512 tokens need about a gigabyte more than one review does."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from handler.encoding import EncodingSettings
    path = tmp_path_factory.mktemp("wide-run")
    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    tokenizer.save_pretrained(path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=512, num_hidden_layers=4,
                        num_attention_heads=8, intermediate_size=2048,
                        max_position_embeddings=BIG_LENGTH, num_labels=2,
                        id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    EncodingSettings(max_length=BIG_LENGTH).save(path)
    (path / "metrics.json").write_text(json.dumps({"preset": "test", "accuracy": 0.0,
                                                   "max_length": BIG_LENGTH}))
    return path


def long_texts(count: int) -> list[str]:
    """`count` reviews of over 600 words: every one is cut to the full 512 tokens."""
    frame = synthetic_reviews(count * 60, seed=25)["text"].tolist()
    return [" ".join(frame[i * 60:(i + 1) * 60]) for i in range(count)]


def test_out_of_memory_in_process_is_split_and_answered(wide_run, caplog):
    device = torch.device("cuda:0")
    handler = load_handler(wide_run, device, **BIG_SETTINGS)
    texts = long_texts(BIG_BATCH)
    expected = handler.predictor.probabilities(texts)[0]  # uncapped: one forward pass
    torch.cuda.empty_cache()
    settled = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    handler.predictor.probabilities(texts)
    needed = torch.cuda.max_memory_reserved(device) - settled
    if needed < 2 * HEADROOM:
        pytest.skip(f"256 x 512 tokens need only {needed / MiB:.0f} MiB here: no room to cap")
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction((settled + HEADROOM) / total, device)
    try:
        with caplog.at_level("WARNING", logger="handler.inference"):
            answered = handler.predictor.probabilities(texts)[0]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        del handler
        torch.cuda.empty_cache()
    splits = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    print(f"\n{len(texts)} x {BIG_LENGTH} tokens needed {needed / MiB:.0f} MiB above the "
          f"settled {settled / MiB:.0f} MiB; capped at +{HEADROOM / MiB:.0f} MiB: {splits}")
    assert splits, "the capped run never ran out of memory: the cap did not bite"
    # (pytest.approx takes no nested lists: compare the (texts, labels) tensors directly)
    assert (answered - expected).abs().max().item() <= 5e-3


# Print the memory a freshly started worker holds once the handler is initialized (model on
# the GPU and warmed up), as a TorchServe worker process would.
SETTLED_CHILD = """
import json, sys, torch
from harness.worker import load_handler
handler = load_handler(sys.argv[1], "cuda:0", **json.loads(sys.argv[2]))
print(json.dumps({"reserved": torch.cuda.memory_reserved(0),
                  "total": torch.cuda.get_device_properties(0).total_memory}))
"""


@pytest.mark.serve
def test_out_of_memory_in_a_worker_is_split_and_answered(wide_run, tmp_path, monkeypatch):
    """The worker's allocator is capped (PYTORCH_ALLOC_CONF per_process_memory_fraction) a
    little above what an idle worker holds: one request of 256 long reviews gets its 200 with
    256 answers, scored in smaller micro-batches."""
    child = subprocess.run([sys.executable, "-c", SETTLED_CHILD, str(wide_run),
                            json.dumps(BIG_SETTINGS)], cwd=REPO, capture_output=True, text=True,
                           timeout=300, check=True)
    memory = json.loads(child.stdout.strip().splitlines()[-1])
    fraction = (memory["reserved"] + HEADROOM) / memory["total"]
    build_archive(wide_run, tmp_path / "store", **BIG_SETTINGS)
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", f"per_process_memory_fraction:{fraction:.9f}")
    texts = long_texts(BIG_BATCH)
    with served(tmp_path / "ts", tmp_path / "store", gpus=1) as server:
        response = post(server, json.dumps({"texts": texts}), JSON, timeout=300)
        log = server.log("model_log")
    assert response.status_code == 200, response.text
    assert len(response.json()) == BIG_BATCH
    assert "out of memory: retrying" in log, "the worker never ran out of memory: cap unused"
    assert "wonderful" not in log and "awful" not in log  # no review text in the log


# -- a device-side assert: the worker answers 503 and exits, TorchServe starts a new one ----

@pytest.fixture(scope="module")
def short_table_run(tiny_run, tmp_path_factory):
    """tiny_run with its embedding table cut after the whole words: a review spelled with
    other tokens (single letters) indexes past the table, which CUDA answers with a
    device-side assert that leaves the device unusable for the process."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path = tmp_path_factory.mktemp("short-table") / "run"
    shutil.copytree(tiny_run, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    keep = 1 + max(tokenizer.convert_tokens_to_ids(SPECIAL + POSITIVE + NEGATIVE + FILLER))
    assert max(tokenizer("xq zzv")["input_ids"]) >= keep
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.resize_token_embeddings(keep)
    model.save_pretrained(path)
    return path


@pytest.mark.serve
def test_device_side_assert_replaces_the_worker(short_table_run, tmp_path):
    build_archive(short_table_run, tmp_path / "store", gpu_precision="fp16")
    with served(tmp_path / "ts", tmp_path / "store", gpus=1) as server:
        (worker,) = ready_workers(server)
        assert post(server, "great movie").status_code == 200
        started = time.monotonic()
        broken = post(server, "xq zzv")
        assert broken.status_code == 503, broken.text
        assert broken.headers.get("Retry-After") == "5"
        while True:  # a new worker (new pid) answers the next good request
            assert time.monotonic() - started < 120, server.log_tail()
            fresh = [w for w in ready_workers(server) if w["pid"] != worker["pid"]]
            if fresh and post(server, "great movie").status_code == 200:
                break
            time.sleep(0.5)
        print(f"\ndevice-side assert: 503 at once, new worker answering after "
              f"{time.monotonic() - started:.1f} s")
        log = server.log("model_log")
    assert "this worker exits so that TorchServe replaces it" in log
