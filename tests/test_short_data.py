"""The short-text corpus (SST-2 in its published form): Penn-Treebank tokens rejoined as typed,
loading from a directory, the seeded draw and mix, and the tiny model trained on a few SST rows
end to end, its SST-2 figure the one training.evaluate computes through the serving path."""
import json

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset

from tests.conftest import sst_style, synthetic_reviews, train_tiny
from training.data import (FILE_SPLIT, NO_SHORT_DATA, REVIEWS, SHORT, SHORT_DATA_ENV,
                           DataError, default_short_data, load_labelled, normalize_ptb)
from training.splits import mix_short, split_short


@pytest.fixture(scope="module")
def sst_dir(tmp_path_factory):
    """train.parquet: 60 sentences and 20 one- or two-word phrases; validation.parquet: 20."""
    path = tmp_path_factory.mktemp("sst2")
    phrases = pd.DataFrame({"text": ["the", "film", "the movie", "a scene"] * 5,
                            "label": [0, 1] * 10})
    pd.concat([sst_style(synthetic_reviews(60, seed=3)), phrases]).to_parquet(
        path / "train.parquet")
    sst_style(synthetic_reviews(20, seed=4)).to_parquet(path / "validation.parquet")
    return path


@pytest.mark.parametrize("published, typed", [
    ("it 's not bad , is n't it ?", "it's not bad, isn't it?"),
    ("i ca n't say i loved it .", "i can't say i loved it."),
    ("you 'll laugh ; you 've seen worse -- maybe !", "you'll laugh; you've seen worse -- maybe!"),
    ("`` a masterpiece '' , says nobody ...", '"a masterpiece", says nobody...'),
    ("that ` they do n't make them like that", "that 'they don't make them like that"),
    ("-lrb- sort of -rrb- worth $ 5 : i 'd pay", "(sort of) worth $5: i'd pay"),
    ("Don't miss it!  Really.", "Don't miss it! Really."),  # typed text stays as typed
])
def test_ptb_tokens_are_rejoined_as_people_type(published, typed):
    assert normalize_ptb(published) == typed


def test_short_texts_load_from_a_directory_normalised(sst_dir):
    splits = load_labelled(str(sst_dir), SHORT)
    assert set(splits) == {"train", "validation"}
    assert len(splits["train"]) == 80 and len(splits["validation"]) == 20
    assert splits["train"].features["label"] == ClassLabel(names=["negative", "positive"])
    assert splits["train"]["text"][0].startswith("it's ")
    assert all(" 's" not in text and "is n't" not in text and " ." not in text
               for text in texts(splits["train"]) + texts(splits["validation"]))


def test_bad_short_data_is_rejected_clearly(tmp_path):
    with pytest.raises(DataError, match="no train.parquet"):
        load_labelled(str(tmp_path), SHORT)
    pd.DataFrame({"text": ["a b c"] * 4, "label": [0, 1, -1, 1]}).to_parquet(
        tmp_path / "train.parquet")
    with pytest.raises(DataError, match="expected 0=negative"):
        load_labelled(str(tmp_path), SHORT)


def test_one_loader_reads_a_directory_or_a_file_and_normalises_only_what_needs_it(sst_dir,
                                                                                   tmp_path):
    """The same rows from SST-2's directory and from a .jsonl file of them; the SST kind of
    source is typed as people type, reviews are read as they are; a file keeps its `kind`."""
    raw = pd.read_parquet(sst_dir / "validation.parquet").assign(kind="plain")
    raw.to_json(tmp_path / "sst.jsonl", orient="records", lines=True)
    from_directory = load_labelled(str(sst_dir), SHORT, only=("validation",))
    assert set(from_directory) == {"validation"}
    from_file = load_labelled(str(tmp_path / "sst.jsonl"), SHORT)[FILE_SPLIT]
    assert texts(from_file) == texts(from_directory["validation"])
    assert from_file.column_names == ["text", "label", "kind"]
    as_reviews = load_labelled(str(tmp_path / "sst.jsonl"), REVIEWS)[FILE_SPLIT]
    assert texts(as_reviews) == list(raw["text"])  # not a PTB source: left as it is
    (tmp_path / "bad.jsonl").write_text('{"text": "fine", "label": 7}\n')
    with pytest.raises(DataError, match="expected 0=negative"):
        load_labelled(str(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="missing.jsonl does not exist"):
        load_labelled(str(tmp_path / "missing.jsonl"))


def texts(dataset) -> list[str]:
    return list(dataset["text"])


def phrases(count: int) -> Dataset:
    """Distinct phrases of 1 to 4 words."""
    return Dataset.from_dict({"text": [" ".join([f"w{i}"] + ["x"] * (i % 4)) for i in range(count)],
                              "label": [i % 2 for i in range(count)]})


def test_the_draw_is_seeded_filtered_and_holds_out_calibration():
    pool = phrases(400)
    train, held_out = split_short(pool, 100, 30, min_words=3, seed=5)
    assert len(train) == 100 and len(held_out) == 30
    assert all(len(text.split()) >= 3 for text in texts(train) + texts(held_out))
    assert not set(texts(train)) & set(texts(held_out))
    again, again_held = split_short(pool, 100, 30, min_words=3, seed=5)
    assert texts(again) == texts(train) and texts(again_held) == texts(held_out)
    other, other_held = split_short(pool, 100, 30, min_words=3, seed=6)
    assert texts(other) != texts(train) and texts(other_held) != texts(held_out)
    # the held-out phrases do not depend on how many are trained on: runs compare fairly
    assert texts(split_short(pool, 20, 30, min_words=3, seed=5)[1]) == texts(held_out)
    everything, _ = split_short(pool, None, 30, min_words=1, seed=5)
    assert len(everything) == 370
    # at most a quarter is held out, so a small corpus still trains
    assert len(split_short(pool, 10, 200, min_words=3, seed=5)[1]) == 50
    with pytest.raises(DataError, match="only 0 short texts have >= 5 words"):
        split_short(pool, 10, 20, min_words=5, seed=5)


def test_calibration_holds_out_whole_sentences_and_trains_on_no_part_of_them():
    """SST's train split holds each sentence and the phrases of its parse tree. Held out must be
    whole sentences (no phrase contains them, as no trained text contains a validation sentence),
    and no phrase of theirs may be trained on, whatever its punctuation."""
    tree = ["the plot is thin, but the acting is superb.", "the plot is thin", "is thin, but",
            "the acting is superb", "acting is superb", "but the acting is superb."]
    others = [f"another sentence number {i} here" for i in range(40)]
    pool = Dataset.from_dict({"text": tree + others, "label": [1] * len(tree) + [0] * 40})
    for seed in range(8):
        train, held_out = split_short(pool, None, 10, min_words=3, seed=seed)
        held, trained = set(texts(held_out)), set(texts(train))
        assert len(held) == 10 and not held & trained
        assert not held & set(tree[1:])  # a phrase inside another is never held out
        if tree[0] in held:
            assert not trained & set(tree), seed  # nor any phrase of it trained on
            break
    else:
        pytest.fail("the sentence was never drawn for calibration")
    assert len(train) == 40 - 9


def test_the_mix_is_deterministic_under_a_seed():
    reviews = Dataset.from_dict({"text": [f"review {i}" for i in range(50)],
                                 "label": [i % 2 for i in range(50)], "truncated": [False] * 50})
    short, _ = split_short(phrases(200), 60, 10, min_words=2, seed=1)
    mixed = mix_short(reviews, short, seed=9)
    assert mixed.column_names == ["text", "label"]
    assert sorted(texts(mixed)) == sorted(texts(reviews) + texts(short))
    assert texts(mix_short(reviews, short, seed=9)) == texts(mixed)
    assert texts(mix_short(reviews, short, seed=10)) != texts(mixed)
    assert texts(mixed)[:50] != texts(reviews)  # mixed, not appended


def test_the_default_source_follows_the_environment(monkeypatch):
    monkeypatch.delenv(SHORT_DATA_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert default_short_data() == "stanfordnlp/sst2"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert default_short_data() == NO_SHORT_DATA
    monkeypatch.setenv(SHORT_DATA_ENV, "/data/sst2")
    assert default_short_data() == "/data/sst2"


def test_tiny_model_trains_on_sst_rows_and_evaluate_reports_the_same_figure(
        tiny_base_model, reviews_dir, sst_dir, tmp_path):
    from training.evaluate import main as evaluate
    from training.model_card import render
    output = tmp_path / "run"
    metrics = train_tiny(tiny_base_model, reviews_dir, output, "--short-data", str(sst_dir),
                         "--short-samples", "40", "--short-min-words", "3",
                         "--short-calibration-size", "10", "--calibration-size", "20",
                         "--no-int8")
    assert metrics["short_data"]["train_texts"] == 40
    assert metrics["short_data"]["calibration_texts"] == 10
    assert "10 short-corpus train sentences" in metrics["calibration"]["fitted_on"]
    sst2 = metrics["sst2_validation"]
    assert sst2["samples"] == 20 and sst2["accuracy"] >= 0.8  # the cue words carry over
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["sst2_validation"]["accuracy"] == sst2["accuracy"]

    report = evaluate(["--model", str(output), "--short-data", str(sst_dir)])
    assert report["split"] == "sst2-validation" and report["samples"] == 20
    assert report["accuracy"] == pytest.approx(sst2["accuracy"])
    assert report["calibration"]["ece"] == pytest.approx(
        metrics["calibration"]["sst2_validation"]["after"]["ece"], abs=1e-4)
    assert (output / "eval-sst2-validation.json").is_file()

    card = render(saved)  # the archive's model card carries the figure and its calibration
    assert f"accuracy {100 * sst2['accuracy']:.2f} %" in card
    assert "| SST-2 validation | 20 |" in card and "10 short-corpus train sentences" in card
