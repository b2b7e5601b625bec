"""Shared fixtures: a tiny random BERT with its own WordPiece vocab, synthetic reviews, and a
tiny fine-tuned run directory. Everything is built offline inside the test session."""
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
POSITIVE = ["great", "wonderful", "loved", "brilliant", "superb", "moving"]
NEGATIVE = ["awful", "boring", "hated", "terrible", "dull", "waste"]
FILLER = ["the", "movie", "film", "was", "plot", "actors", "and", "a", "scene", "story", "it",
          "this", "i", "ending", "music", "really"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def synthetic_reviews(count: int, seed: int = 0) -> pd.DataFrame:
    """Reviews whose sentiment words decide the label; lengths vary from 4 to 23 words."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = i % 2
        cue = POSITIVE if label else NEGATIVE
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 20))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
        rows.append({"text": " ".join(words).capitalize() + ".", "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with a 40-word WordPiece vocab."""
    from transformers import BertConfig, BertModel, BertTokenizer
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER)) + list("abcdefghijklmnopqrstuvwxyz.,!?")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reviews_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reviews")
    synthetic_reviews(120).to_parquet(path / "train.parquet")
    return path


def train_tiny(base_model: Path, data: Path, output: Path, *extra: str) -> dict:
    from training.train import main
    return main(["--base-model", str(base_model), "--data", str(data), "--output-dir",
                 str(output), "--max-length", "32", "--epochs", "8", "--batch-size", "8",
                 "--learning-rate", "3e-3", "--validation-size", "24", "--precision", "fp32",
                 *extra])


@pytest.fixture(scope="session")
def tiny_run(tiny_base_model, reviews_dir, tmp_path_factory) -> Path:
    """A run directory fine-tuned from the tiny BERT on synthetic reviews."""
    output = tmp_path_factory.mktemp("runs") / "tiny"
    train_tiny(tiny_base_model, reviews_dir, output)
    return output


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_config(store: Path, ports: dict, **overrides) -> str:
    """serving/config.properties with loopback test ports, the test model store and overrides."""
    settings = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "model_store": str(store),
        "metrics_config": str(REPO / "serving" / "metrics.yaml"),
        **{key: str(value) for key, value in overrides.items()},
    }
    lines = []
    for line in (REPO / "serving" / "config.properties").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in settings:
            line = f"{key}={settings.pop(key)}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


class TorchServe:
    """A real TorchServe process on free loopback ports, in its own process group."""

    def __init__(self, workdir: Path, store: Path, **overrides):
        import subprocess
        import sys
        self.workdir = workdir
        self.ports = {name: free_port() for name in ("inference", "management", "metrics")}
        self.inference = f"http://127.0.0.1:{self.ports['inference']}"
        self.management = f"http://127.0.0.1:{self.ports['management']}"
        self.metrics = f"http://127.0.0.1:{self.ports['metrics']}"
        # nothing shared with another TorchServe on this machine (a developer's `make serve`):
        # gRPC ports, the launcher's pid file ($TMPDIR) and the worker sockets ($TEMP)
        overrides.setdefault("grpc_inference_port", free_port())
        overrides.setdefault("grpc_management_port", free_port())
        config = workdir / "config.properties"
        config.write_text(server_config(store, self.ports, **overrides))
        env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
        env.update(LOG_LOCATION=str(workdir / "logs"), METRICS_LOCATION=str(workdir / "logs"),
                   TMPDIR=str(workdir), TEMP=str(workdir))
        torchserve = Path(sys.executable).parent / "torchserve"
        self.process = subprocess.Popen(
            [str(torchserve), "--start", "--foreground", "--ncs", "--disable-token-auth",
             "--ts-config", str(config), "--model-store", str(store)],
            cwd=workdir, env=env, stdout=open(workdir / "stdout.log", "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> float:
        """Seconds until /ping is healthy and the model answers describe with a READY worker."""
        import time
        import requests
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited: {self.log_tail()}")
            try:
                if requests.get(f"{self.inference}/ping", timeout=2).status_code == 200 and \
                        any(w["status"] == "READY" for w in self.describe()["workers"]):
                    return time.monotonic() - started
            except (requests.ConnectionError, requests.Timeout, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"TorchServe not ready after {timeout} s: {self.log_tail()}")

    def describe(self) -> dict:
        import requests
        return requests.get(f"{self.management}/models/bert_sentiment", timeout=10).json()[0]

    def log_tail(self, lines: int = 60) -> str:
        text = ""
        for name in ("stdout.log", "logs/ts_log.log", "logs/model_log.log"):
            path = self.workdir / name
            if path.is_file():
                text += f"\n--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return text

    def stop(self) -> None:
        import signal
        import subprocess
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def tiny_archive(tiny_run, tmp_path_factory) -> Path:
    """model_store/bert_sentiment.mar built from the tiny run with training.archive."""
    from training.archive import main
    return main([str(tiny_run), "--model-store", str(tmp_path_factory.mktemp("model_store"))])


@pytest.fixture(scope="session")
def torchserve(tiny_archive, tmp_path_factory):
    server = TorchServe(tmp_path_factory.mktemp("torchserve"), tiny_archive.parent)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
