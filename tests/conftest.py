"""Shared fixtures: a tiny random BERT with its own WordPiece vocab, synthetic reviews, a
tiny fine-tuned run directory, its archives (the shipped one and a second version) and a
TorchServe serving it. Everything is built offline inside the test session; servers come from
harness/."""
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from harness.http import JSON, post  # noqa: E402
from harness.server import manifest_version, running  # noqa: E402

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


def sst_style(frame: pd.DataFrame) -> pd.DataFrame:
    """Synthetic reviews as SST publishes text: lowercased, "it 's", space before the period."""
    text = "it 's " + frame["text"].str.lower().str.rstrip(".") + " , is n't it ."
    return pd.DataFrame({"text": text, "label": frame["label"]})


def long_reviews(count: int, seed: int) -> list[str]:
    """Synthetic reviews of 40-90 words, some with IMDB's <br /> tags: longer than the 32 tokens
    the tiny model was trained with, so truncation decides what the model sees."""
    rng = random.Random(seed)
    frame = synthetic_reviews(count * 4, seed=seed)
    texts = []
    for i in range(count):
        words = " ".join(frame["text"][4 * i:4 * i + 4]).split()
        while len(words) < 40:
            words += rng.choice(frame["text"]).split()
        text = " ".join(words[:rng.randint(40, 90)])
        texts.append(text.replace(". ", ".<br /><br />", 1) if i % 2 else text)
    return texts


def tiny_bert(path: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with a 40-word WordPiece vocab, saved
    to `path`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer
    vocab = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER)) + list("abcdefghijklmnopqrstuvwxyz.,!?")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    with torch.random.fork_rng():  # the same weights whichever tests drew random numbers first
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def reviews_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reviews")
    synthetic_reviews(120).to_parquet(path / "train.parquet")
    return path


def train_tiny(base_model: Path, data: Path, output: Path, *extra: str) -> dict:
    """The tiny BERT trained on `data`; no short-text corpus and no soft labels unless `extra`
    names them (the committed soft labels are for SST-2, not the synthetic texts). Its
    embeddings and bottom layer train (the quick preset freezes them): a random model has
    nothing worth keeping."""
    from training.train import main
    return main(["--base-model", str(base_model), "--data", str(data), "--output-dir",
                 str(output), "--max-length", "32", "--epochs", "8", "--batch-size", "8",
                 "--learning-rate", "3e-3", "--validation-size", "24", "--precision", "fp32",
                 "--short-data", "none", "--soft-labels", "none", "--no-freeze-word-embeddings",
                 "--freeze-layers", "0",
                 *extra])


@pytest.fixture(scope="session")
def tiny_run(tiny_base_model, reviews_dir, tmp_path_factory) -> Path:
    """A run directory fine-tuned from the tiny BERT on synthetic reviews."""
    output = tmp_path_factory.mktemp("runs") / "tiny"
    train_tiny(tiny_base_model, reviews_dir, output)
    return output


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    """(model in eval mode, tokenizer, encoding settings) of the tiny run, loaded as
    training.evaluate loads a run."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_run).eval()
    return model, tokenizer, EncodingSettings.load(tiny_run)


@pytest.fixture(scope="session")
def tiny_archive(tiny_run, tmp_path_factory) -> Path:
    """bert_sentiment.mar built from the tiny run with training.archive, with the shipped
    model-config.yaml but fp32 on the CPU, so answers can be compared exactly with offline
    fp32 scores (bf16's accuracy is checked on real reviews by benchmarks/accuracy.py)."""
    import yaml

    from training.archive import main
    workdir = tmp_path_factory.mktemp("model_store")
    settings = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    settings["handler"]["cpu_precision"] = "fp32"
    config = workdir / "model-config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return main([str(tiny_run), "--model-store", str(workdir / "store"), "--config-file",
                 str(config)])


def predict_once(mar: Path, texts: list[str], workdir: Path) -> tuple[list[dict], str]:
    """Start a TorchServe on the archive, POST the texts in one request, stop it: the answers
    (HTTP 200 asserted) and the worker's model log."""
    import json
    with running(workdir, mar.parent) as server:
        response = post(server, json.dumps({"texts": texts}), JSON)
        assert response.status_code == 200, response.text
        return response.json(), server.log("model_log")


@pytest.fixture(scope="session")
def torchserve(tiny_archive, tmp_path_factory):
    # CPU, even on a GPU machine: answers are compared with fp32 scores (GPU: tests/test_gpu.py)
    with running(tmp_path_factory.mktemp("torchserve"), tiny_archive.parent,
                 number_of_gpu=0) as server:
        yield server


@pytest.fixture(scope="session")
def two_archives(tiny_run, tiny_archive, tmp_path_factory) -> tuple[Path, Path]:
    """(v1, v2): the tiny archive, and the same run with its two classifier rows swapped,
    archived with the same model-config.yaml (so under another version: other weights). v2's
    positive probability is v1's negative one, so the two answer any clear review far apart (a
    shifted bias did not: the tiny model is not bit-reproducible, and when it came out sure of
    the probe, 0.950 and 0.988 told the versions apart by less than the tests' 0.05)."""
    import shutil
    import zipfile

    from safetensors.torch import load_file, save_file

    from training.archive import main
    run = tmp_path_factory.mktemp("runs") / "tiny-v2"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    weights = load_file(run / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):
        weights[name] = weights[name].flip(0).contiguous()
    save_file(weights, run / "model.safetensors", metadata={"format": "pt"})
    work = tmp_path_factory.mktemp("v2-archive")
    with zipfile.ZipFile(tiny_archive) as archive:
        (work / "model-config.yaml").write_bytes(archive.read("model-config.yaml"))
    v2 = main([str(run), "--model-store", str(work / "store"), "--config-file",
               str(work / "model-config.yaml")])
    assert manifest_version(v2) != manifest_version(tiny_archive)
    return tiny_archive, v2
