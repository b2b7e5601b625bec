"""The GPU settings that can be checked without a GPU: training's batch and optimizer defaults,
`training.evaluate --precision fp16`, and the compose GPU override training the full preset."""
import subprocess

import pytest
import torch
import yaml

from harness.tools import tool
from tests.conftest import REPO


def test_training_batch_default_is_larger_on_a_gpu(monkeypatch):
    from training.config import CPU_BATCH_SIZE, GPU_BATCH_SIZE, parse_args
    assert GPU_BATCH_SIZE > CPU_BATCH_SIZE
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_args(["--preset", "full"]).recipe.batch_size == CPU_BATCH_SIZE
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_args(["--preset", "full"]).recipe.batch_size == GPU_BATCH_SIZE
    assert parse_args(["--preset", "quick", "--batch-size", "8"]).recipe.batch_size == 8


def test_run_records_the_fused_optimizer_and_device(tiny_run):
    import json
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["optimizer"] == "adamw_torch_fused"
    assert metrics["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available()
                                 else "cpu")
    assert metrics["batch_size"] == 8  # conftest's train_tiny passes --batch-size 8


def test_evaluate_fp16(tiny_run, tmp_path):
    from training.evaluate import main
    fp32 = main(["--model", str(tiny_run), "--precision", "fp32",
                 "--output", str(tmp_path / "fp32.json")])
    fp16 = main(["--model", str(tiny_run), "--precision", "fp16",
                 "--output", str(tmp_path / "fp16.json")])
    assert fp16["inference_precision"] == "fp16" and fp16["samples"] == fp32["samples"]
    assert fp16["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert abs(fp16["accuracy"] - fp32["accuracy"]) <= 1 / fp32["samples"]
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_run), "--precision", "fp8"])


def test_compose_gpu_override_trains_the_full_preset():
    override = yaml.safe_load((REPO / "docker" / "docker-compose.gpu.yml").read_text())
    environment = override["services"]["model-init"]["environment"]
    assert environment["MODEL_INIT_PRESET"] == "${MODEL_INIT_PRESET:-full}"
    base = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert base["services"]["model-init"]["environment"]["MODEL_INIT_PRESET"] == \
        "${MODEL_INIT_PRESET:-quick}"


def test_compose_merges_the_gpu_override(monkeypatch):
    compose = tool("docker-compose", "Debian package docker-compose")
    monkeypatch.delenv("MODEL_INIT_PRESET", raising=False)
    merged = subprocess.run([compose, "-f", "docker-compose.yml", "-f",
                             "docker/docker-compose.gpu.yml", "config"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    service = yaml.safe_load(merged)["services"]["model-init"]
    assert service["environment"]["MODEL_INIT_PRESET"] == "full"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
