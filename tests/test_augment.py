"""Excerpt augmentation: seeded, label-keeping, short, free of <br />, sized by the ratio."""
import random
from collections import Counter

import pytest
from datasets import ClassLabel, Dataset, Features, Value

from training.augment import (EXCERPT_KINDS, add_excerpts, clean, describe, excerpt,
                              make_excerpts, parse_kinds, sentences)

WORDS = "the plot was slow but the cast gave it everything they had and the music soared".split()


def review(rng: random.Random, label: int) -> str:
    """Eight to fourteen sentences joined by spaces or IMDB's <br /> breaks, ending in a verdict."""
    parts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 18))).capitalize() + "."
             for _ in range(rng.randint(7, 13))]
    parts.append("I loved it!" if label else "I hated it!")
    return "".join(part + rng.choice([" ", " ", "<br /><br />", "<BR/> "]) for part in parts).strip()


@pytest.fixture(scope="module")
def reviews() -> Dataset:
    rng = random.Random(7)
    labels = [i % 2 for i in range(200)]
    features = Features(text=Value("string"), label=ClassLabel(names=["negative", "positive"]))
    return Dataset.from_dict({"text": [review(rng, label) for label in labels], "label": labels},
                             features=features)


def test_same_seed_same_rows_other_seed_other_rows(reviews):
    first = add_excerpts(reviews, ["last", "window"], 1.5, seed=3)
    again = add_excerpts(reviews, ["last", "window"], 1.5, seed=3)
    other = add_excerpts(reviews, ["last", "window"], 1.5, seed=4)
    assert first["text"] == again["text"] and first["label"] == again["label"]
    assert first["text"] != other["text"]
    assert sorted(first["text"]) != sorted(other["text"])  # different excerpts, not just order


def test_a_reviews_excerpts_do_not_depend_on_the_rest_of_the_data(reviews):
    whole = make_excerpts(reviews, list(EXCERPT_KINDS), 2.0, seed=5)
    half = make_excerpts(reviews.select(range(100)), list(EXCERPT_KINDS), 2.0, seed=5)
    assert whole.features["label"] == reviews.features["label"]
    assert len(half) > 150
    assert half.to_list() == [row for row in whole.to_list() if row["source"] < 100]


def test_each_excerpt_is_a_piece_of_its_review_with_its_label(reviews):
    pieces = make_excerpts(reviews, list(EXCERPT_KINDS), 2.0, seed=1)
    for row in pieces:
        source = reviews[row["source"]]
        assert row["label"] == source["label"]
        assert row["text"] in clean(source["text"])
        assert row["text"] != clean(source["text"])
        assert row["text"] == row["text"].strip() and row["text"][-1] in ".!"


def test_every_added_row_is_an_excerpt_or_an_original(reviews):
    mixed = add_excerpts(reviews, ["last"], 1.0, seed=0)
    originals = {(text, label) for text, label in zip(reviews["text"], reviews["label"])}
    added = [(t, y) for t, y in zip(mixed["text"], mixed["label"]) if (t, y) not in originals]
    assert len(mixed) == len(reviews) + len(added)
    by_label = {label: [clean(t) for t, y in originals if y == label] for label in (0, 1)}
    for text, label in added:
        assert any(text in source for source in by_label[label])
        assert not any(text in source for source in by_label[1 - label])  # verdicts differ


def test_excerpts_are_short_and_free_of_html_breaks(reviews):
    pieces = make_excerpts(reviews, list(EXCERPT_KINDS), 2.0, seed=2, min_words=3, max_words=25)
    lengths = [len(text.split()) for text in pieces["text"]]
    assert min(lengths) >= 3 and max(lengths) <= 25
    assert not any("<" in text or "  " in text for text in pieces["text"])


def test_last_excerpts_carry_the_verdict(reviews):
    pieces = make_excerpts(reviews, ["last"], 1.0, seed=0)
    assert len(pieces) == len(reviews)
    for row in pieces:
        assert row["text"].endswith("I loved it!" if row["label"] else "I hated it!")


@pytest.mark.parametrize("per_review", [0.25, 1.0, 1.5, 3.0])
def test_counts_follow_the_ratio(reviews, per_review):
    kinds = ["last", "first", "window"]
    pieces = make_excerpts(reviews, kinds, per_review, seed=9)
    assert len(pieces) == round(per_review * len(reviews))  # these reviews always have room
    assert len(add_excerpts(reviews, kinds, per_review, seed=9)) == len(reviews) + len(pieces)
    if per_review == 3.0:  # one of each kind per review
        assert Counter(pieces["excerpt_kind"]) == {kind: len(reviews) for kind in kinds}
        assert Counter(pieces["source"]) == {i: 3 for i in range(len(reviews))}


def test_no_augmentation_returns_the_dataset(reviews):
    assert add_excerpts(reviews, [], 2.0, seed=0) is reviews
    assert add_excerpts(reviews, ["last"], 0.0, seed=0) is reviews


def test_reviews_too_short_to_excerpt_give_nothing():
    rng = random.Random(0)
    one_sentence = "Great film, loved every minute of it."
    assert excerpt(sentences(one_sentence), "last", rng) is None  # it is the whole review
    assert excerpt(sentences("Ok. Fine."), "window", rng) is None  # under 3 words
    assert excerpt([], "first", rng) is None


def test_sentences_split_on_end_punctuation_and_breaks():
    text = 'It starts well.<br /><br />Then "it drags." Why?! The end... 3.5 stars'
    assert sentences(text) == ["It starts well.", 'Then "it drags."', "Why?!", "The end...",
                               "3.5 stars"]


def test_bad_recipes_are_refused(reviews):
    assert parse_kinds("none") == [] and parse_kinds(" last, window ") == ["last", "window"]
    for spec in ["last,middle", "last,last", "none,last"]:
        with pytest.raises(ValueError, match="augmentation"):
            parse_kinds(spec)
    with pytest.raises(ValueError, match=">= 0"):
        add_excerpts(reviews, ["last"], -1.0, seed=0)
    with pytest.raises(ValueError, match="lacks"):
        add_excerpts(reviews.rename_column("text", "review"), ["last"], 1.0, seed=0)


def test_recipe_description():
    recipe = describe(["last", "window"], 2.0, 42, reviews=3000, excerpts=5686)
    assert recipe["kinds"] == ["last", "window"] and recipe["excerpts_per_review"] == 2.0
    assert recipe["words"] == [3, 60] and recipe["excerpts"] == 5686
    assert describe([], 2.0, 42)["excerpts_per_review"] == 0.0


def test_large_string_text_columns_work(reviews):
    """pandas >= 3 writes parquet strings as large_string; excerpts must concatenate with them."""
    large = reviews.cast_column("text", Value("large_string"))
    mixed = add_excerpts(large, ["last"], 1.0, seed=0)
    assert len(mixed) == 2 * len(reviews) and mixed.features["text"] == Value("large_string")


def test_excerpts_may_be_cut_from_more_reviews_than_are_trained_on(reviews):
    """Same number of excerpts (per_review x the training reviews), spread over more reviews."""
    from datasets import concatenate_datasets
    trained = reviews.select(range(50))
    sources = concatenate_datasets([trained, reviews.select(range(50, 200))])
    mixed = add_excerpts(trained, ["last", "first", "window"], 3.0, seed=2, sources=sources)
    pieces = make_excerpts(sources, ["last", "first", "window"], 150 / 200, seed=2)
    rows = Counter(zip(mixed["text"], mixed["label"]))
    rows.subtract(zip(trained["text"], trained["label"]))
    assert +rows == Counter(zip(pieces["text"], pieces["label"]))
    assert len(pieces) == 150 and len(set(pieces["source"])) == 150  # one from each of 150
    assert sum(source >= 50 for source in pieces["source"]) > 100  # most from reviews not trained on
    assert all(row["label"] == sources[row["source"]]["label"] for row in pieces)
