"""The default data source, the hub id stanfordnlp/imdb, through the real `datasets.load_dataset`.

Only the network is faked: tests/fake_hub.py serves a small repo in the real stanfordnlp/imdb
layout (config plain_text; splits train, test and unsupervised, whose labels are -1) and
HF_ENDPOINT points the libraries at it. Each check runs in a subprocess so that huggingface_hub
and datasets read their settings at import time, as they do for a user, with an empty cache.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, synthetic_reviews
from tests.fake_hub import FakeHub, imdb_repo

HUB_ID = "stanfordnlp/imdb"
TRAIN, TEST, UNSUPERVISED = 60, 20, 20
MARK = "Unlabeled"  # starts every unsupervised review, so a leak into our splits is visible

LOAD_REVIEWS = """
import json, sys
from training.data import load_reviews
splits, info = load_reviews(sys.argv[1], validation_size=int(sys.argv[2]))
print(json.dumps({"info": info, "splits": {name: {
    "rows": len(ds), "labels": sorted(ds["label"]), "names": ds.features["label"].names,
    "unlabeled": sum(text.startswith("%s") for text in ds["text"])}
    for name, ds in splits.items()}}))
""" % MARK


@pytest.fixture(scope="module")
def hub():
    unsupervised = synthetic_reviews(UNSUPERVISED, seed=2)
    unsupervised = unsupervised.assign(label=-1, text=MARK + " " + unsupervised["text"])
    repo = imdb_repo({"train": synthetic_reviews(TRAIN), "test": synthetic_reviews(TEST, seed=1),
                      "unsupervised": unsupervised})
    with FakeHub({HUB_ID: repo}) as server:
        yield server


def run_python(args: list[str], hub: FakeHub, tmp_path, offline: bool = False, timeout=300):
    """Run `python ARGS` in the repository with an empty HF cache, talking only to the fake hub."""
    hub.requests.clear()
    flag = "1" if offline else "0"
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE=flag, HF_DATASETS_OFFLINE=flag,
               HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
               TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def downloaded(hub: FakeHub, split: str) -> bool:
    name = f"/plain_text/{split}-00000-of-00001.parquet"
    return any(r.startswith("GET /datasets/" + HUB_ID) and r.endswith(name) for r in hub.requests)


def test_hub_id_loads_train_and_test_and_ignores_unsupervised(hub, tmp_path):
    done = run_python(["-c", LOAD_REVIEWS, HUB_ID, "12"], hub, tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert downloaded(hub, "train") and downloaded(hub, "test"), hub.requests
    result = json.loads(done.stdout.strip().splitlines()[-1])
    splits = result["splits"]
    assert set(splits) == {"train", "validation", "test"}
    assert {name: s["rows"] for name, s in splits.items()} == {
        "train": TRAIN - 12, "validation": 12, "test": TEST}
    assert all(s["unlabeled"] == 0 for s in splits.values())
    assert all(set(s["labels"]) == {0, 1} for s in splits.values())
    assert splits["validation"]["labels"].count(1) == 6  # carved stratified from train
    assert all(s["names"] == ["negative", "positive"] for s in splits.values())
    assert result["info"]["data_source"] == HUB_ID


def test_training_cli_default_data_trains_through_the_hub(hub, tiny_base_model, tmp_path):
    output = tmp_path / "run"
    done = run_python(["-m", "training", "--base-model", str(tiny_base_model), "--output-dir",
                       str(output), "--max-length", "32", "--epochs", "1", "--batch-size", "8",
                       "--learning-rate", "3e-3", "--validation-size", "12",
                       "--precision", "fp32"], hub, tmp_path)  # no --data: the default
    assert done.returncode == 0, done.stderr[-3000:]
    assert downloaded(hub, "train"), hub.requests
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["data_source"] == HUB_ID
    assert metrics["split_sizes"] == {"train": TRAIN - 12, "validation": 12}
    assert (output / "model.safetensors").is_file()


def test_training_cli_default_data_offline_says_it_could_not_load(hub, tmp_path):
    done = run_python(["-m", "training", "--output-dir", str(tmp_path / "run")], hub, tmp_path,
                      offline=True, timeout=60)
    assert done.returncode != 0
    assert f"error: could not load dataset '{HUB_ID}'" in done.stderr, done.stderr[-3000:]
    assert "does not exist" not in done.stderr
    assert hub.requests == []  # offline means offline: the hub was never asked
    assert not (tmp_path / "run" / "metrics.json").exists()
