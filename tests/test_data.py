"""Loading reviews from parquet directories and the stratified, seeded validation carve."""
import pandas as pd
import pytest

from tests.conftest import synthetic_reviews
from training.data import DataError, load_reviews, take


def test_validation_is_carved_stratified_and_deterministic(reviews_dir):
    splits, info = load_reviews(str(reviews_dir), validation_size=40, seed=7)
    assert set(splits) == {"train", "validation"}
    assert len(splits["train"]) == 80 and len(splits["validation"]) == 40
    assert sorted(splits["validation"]["label"]).count(1) == 20  # stratified: half positive
    assert "carved from train" in info["validation"]
    again, _ = load_reviews(str(reviews_dir), validation_size=40, seed=7)
    assert again["validation"]["text"] == splits["validation"]["text"]
    other, _ = load_reviews(str(reviews_dir), validation_size=40, seed=8)
    assert other["validation"]["text"] != splits["validation"]["text"]
    assert not set(splits["train"]["text"]) & set(splits["validation"]["text"])


def test_test_split_is_kept_when_present(tmp_path):
    synthetic_reviews(40).to_parquet(tmp_path / "train.parquet")
    synthetic_reviews(10, seed=1).to_parquet(tmp_path / "test.parquet")
    splits, _ = load_reviews(str(tmp_path), validation_size=10)
    assert len(splits["test"]) == 10 and len(splits["train"]) == 30


def test_take_is_a_seeded_random_subset_not_a_prefix(reviews_dir):
    splits, _ = load_reviews(str(reviews_dir), validation_size=20)
    subset = take(splits["train"], 30, seed=1)
    assert len(subset) == 30 and subset["text"] != splits["train"]["text"][:30]
    assert take(splits["train"], 30, seed=1)["text"] == subset["text"]
    assert take(splits["train"], None, seed=1) is splits["train"]


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"review": ["a"] * 10, "label": [0, 1] * 5}), "lacks column"),
    (pd.DataFrame({"text": ["a"] * 10, "label": [0, 1, 2, 0, 1] * 2}), "expected 0=negative"),
])
def test_malformed_data_is_rejected_clearly(tmp_path, frame, message):
    frame.to_parquet(tmp_path / "train.parquet")
    with pytest.raises(DataError, match=message):
        load_reviews(str(tmp_path), validation_size=2)


def test_missing_data_is_rejected_clearly(tmp_path):
    with pytest.raises(DataError, match="no train.parquet"):
        load_reviews(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_reviews(str(tmp_path / "nope"))
