"""The default data sources, the hub ids stanfordnlp/imdb and stanfordnlp/sst2, through the real
`datasets.load_dataset`.

Only the network is faked: tests/fake_hub.py serves small repos in the real stanfordnlp/imdb
layout (config plain_text; splits train, test and unsupervised, whose labels are -1) and the
real stanfordnlp/sst2 layout (columns idx, sentence, label; splits train, validation and test,
whose labels are -1), and HF_ENDPOINT points the libraries at them. Each check runs in a subprocess so that huggingface_hub
and datasets read their settings at import time, as they do for a user, with an empty cache.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, synthetic_reviews
from tests.fake_hub import FakeHub, imdb_repo, sst2_repo

HUB_ID = "stanfordnlp/imdb"
SST2_ID = "stanfordnlp/sst2"
TRAIN, TEST, UNSUPERVISED = 60, 20, 20
SST_TRAIN, SST_VALIDATION, SST_TEST = 40, 16, 8
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

LOAD_SHORT_TEXTS = """
import json, sys
from training.data import SHORT, load_labelled
splits = load_labelled(sys.argv[1], SHORT)
print(json.dumps({name: {"rows": len(ds), "columns": ds.column_names, "labels": sorted(set(ds["label"])),
                         "names": ds.features["label"].names, "texts": list(ds["text"])}
                  for name, ds in splits.items()}))
"""


def sst_sentences(count: int, seed: int):
    """Synthetic reviews as SST publishes its text: lowercased, PTB-tokenized ("it 's", " .")."""
    frame = synthetic_reviews(count, seed=seed)
    return frame.assign(sentence="it 's " + frame["text"].str.lower().str.rstrip(".") + " .")[
        ["sentence", "label"]]


@pytest.fixture(scope="module")
def hub():
    unsupervised = synthetic_reviews(UNSUPERVISED, seed=2)
    unsupervised = unsupervised.assign(label=-1, text=MARK + " " + unsupervised["text"])
    repo = imdb_repo({"train": synthetic_reviews(TRAIN), "test": synthetic_reviews(TEST, seed=1),
                      "unsupervised": unsupervised})
    test = sst_sentences(SST_TEST, seed=7)
    sst2 = sst2_repo({"train": sst_sentences(SST_TRAIN, seed=5),
                      "validation": sst_sentences(SST_VALIDATION, seed=6),
                      "test": test.assign(label=-1, sentence=MARK.lower() + " " + test["sentence"])})
    with FakeHub({HUB_ID: repo, SST2_ID: sst2}) as server:
        yield server


def run_python(args: list[str], hub: FakeHub, tmp_path, offline: bool = False, timeout=300):
    """Run `python ARGS` in the repository with an empty HF cache, talking only to the fake hub."""
    hub.requests.clear()
    flag = "1" if offline else "0"
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE=flag, HF_DATASETS_OFFLINE=flag,
               SHORT_DATA_DIR="",  # the default short-text corpus: the hub id
               HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
               TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def downloaded(hub: FakeHub, split: str, repo: str = HUB_ID, folder: str = "plain_text") -> bool:
    name = f"/{folder}/{split}-00000-of-00001.parquet"
    return any(r.startswith("GET /datasets/" + repo) and r.endswith(name) for r in hub.requests)


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


def test_sst2_hub_id_loads_train_and_validation_normalised_and_ignores_test(hub, tmp_path):
    done = run_python(["-c", LOAD_SHORT_TEXTS, SST2_ID], hub, tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert downloaded(hub, "train", SST2_ID, "data"), hub.requests
    splits = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(splits) == {"train", "validation"}  # test (label -1) is not ours
    assert {name: s["rows"] for name, s in splits.items()} == {
        "train": SST_TRAIN, "validation": SST_VALIDATION}
    for split in splits.values():
        assert split["columns"] == ["text", "label"] and split["labels"] == [0, 1]
        assert split["names"] == ["negative", "positive"]
        assert all(text.startswith("it's ") and not text.endswith(" .") for text in split["texts"])
        assert not any(MARK.lower() in text for text in split["texts"])


def test_training_cli_default_data_trains_through_the_hub(hub, tiny_base_model, tmp_path):
    output = tmp_path / "run"
    done = run_python(["-m", "training", "--base-model", str(tiny_base_model), "--output-dir",
                       str(output), "--max-length", "32", "--epochs", "1", "--batch-size", "8",
                       "--learning-rate", "3e-3", "--validation-size", "12",
                       "--precision", "fp32", "--soft-labels", "none"],  # for SST-2's real text
                      hub, tmp_path)  # no --data: the default
    assert done.returncode == 0, done.stderr[-3000:]
    assert downloaded(hub, "train"), hub.requests
    assert downloaded(hub, "train", SST2_ID, "data"), hub.requests
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["data_source"] == HUB_ID
    assert metrics["split_sizes"] == {"train": TRAIN - 12, "validation": 12}
    assert metrics["short_data"]["source"] == SST2_ID
    assert metrics["short_data"]["train_texts"] == SST_TRAIN  # no temperature: none held out
    assert metrics["sst2_validation"]["samples"] == SST_VALIDATION
    assert (output / "model.safetensors").is_file()


def test_training_cli_default_data_offline_says_it_could_not_load(hub, tmp_path):
    done = run_python(["-m", "training", "--output-dir", str(tmp_path / "run")], hub, tmp_path,
                      offline=True, timeout=300)  # importing torch on a busy 2-core CI
    assert done.returncode != 0
    assert f"error: could not load dataset '{HUB_ID}'" in done.stderr, done.stderr[-3000:]
    assert "does not exist" not in done.stderr
    assert hub.requests == []  # offline means offline: the hub was never asked
    assert not (tmp_path / "run" / "metrics.json").exists()
