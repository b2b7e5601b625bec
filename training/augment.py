"""Short excerpts of the training reviews, labelled with their review's label.

IMDB reviews average ~230 words, but the service is mostly sent one or two sentences. Mixing
excerpts of the training reviews into the training set shows the model short verdicts without
any new data. The kinds of excerpt:

- `last`: the last 1-3 sentences, where reviewers usually state their verdict;
- `first`: the first 1-2 sentences, where many announce it;
- `window`: 1-2 consecutive sentences from anywhere in the review.

An excerpt keeps the review's label even when, cut out, it says little either way (a window of
plot summary): the noise is the price of getting the verdict sentences in. Excerpts are taken
from the text with `<br />` replaced (handler.encoding.normalize_text) and whitespace collapsed,
kept only at `min_words..max_words` words, and never equal to the whole review. Everything is
seeded per review, so the same seed gives the same rows whatever the batching.
"""
import math
import random
import re

import numpy as np
from datasets import Dataset, Features, Value, concatenate_datasets

from handler.encoding import normalize_text

EXCERPT_KINDS = ("last", "first", "window")
MIN_WORDS = 3
MAX_WORDS = 60
RETRIES = 4
# a sentence: up to a run of . ! or ? (with closing quotes/brackets) followed by a space, or the end
SENTENCE = re.compile(r"""\S.*?(?:[.!?]+["')\]]*(?=\s|$)|$)""", re.S)


def parse_kinds(spec: str) -> list[str]:
    """`"last,window"` -> ["last", "window"]; `"none"` or `""` -> []."""
    kinds = [kind.strip() for kind in spec.split(",") if kind.strip()]
    if kinds == ["none"]:
        return []
    unknown = [kind for kind in kinds if kind not in EXCERPT_KINDS]
    if unknown or len(set(kinds)) != len(kinds):
        raise ValueError(f"augmentation {spec!r}: expected 'none' or distinct kinds from "
                         f"{', '.join(EXCERPT_KINDS)} separated by commas")
    return kinds


def clean(text: str) -> str:
    """The review as excerpts are cut from it: no `<br />`, single spaces."""
    return " ".join(normalize_text(text).split())


def sentences(text: str) -> list[str]:
    return SENTENCE.findall(clean(text))


def words(parts: list[str]) -> int:
    return sum(len(part.split()) for part in parts)


def excerpt(parts: list[str], kind: str, rng: random.Random,
            min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> str | None:
    """One excerpt of a review split into sentences, or None when no span fits the limits.

    The span starts at its drawn size, shrinks while it is too long and grows (towards the end
    of the review for `first` and `window`, towards the start for `last`) while it is too short.
    """
    n = len(parts)
    if n < 2:
        return None  # the whole review: nothing new to learn from it
    size = min(n - 1, rng.randint(1, 3) if kind == "last" else rng.randint(1, 2))
    start = {"last": n - size, "first": 0}.get(kind)
    if start is None:
        start = rng.randrange(n - size + 1)

    def span(size):
        return parts[n - size:] if kind == "last" else parts[start:start + size]

    while size > 1 and words(span(size)) > max_words:
        size -= 1
    limit = n if kind == "last" else n - start
    while size < limit and words(span(size)) < min_words:
        size += 1
    chosen = span(size)
    if not min_words <= words(chosen) <= max_words or size == n:
        return None  # too short or long, or the whole review: nothing new to learn from it
    return " ".join(chosen)


def check_recipe(dataset: Dataset, kinds: list[str], per_review: float, min_words: int,
                 max_words: int) -> list[str]:
    missing = {"text", "label"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"dataset lacks column(s) {sorted(missing)}")
    if not (math.isfinite(per_review) and per_review >= 0):
        raise ValueError(f"excerpts per review must be a number >= 0, got {per_review}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    return parse_kinds(",".join(kinds))


def excerpt_counts(n: int, per_review: float, seed: int) -> np.ndarray:
    """How many excerpts each review gets: floor(per_review) each, and one more for a seeded
    random round(fraction * n) of them, so the total is exactly round(per_review * n)."""
    whole = int(per_review)
    counts = np.full(n, whole, dtype=np.int64)
    extra = round((per_review - whole) * n)
    counts[np.random.default_rng(seed).choice(n, extra, replace=False)] += 1
    return counts


def make_excerpts(dataset: Dataset, kinds: list[str], per_review: float, seed: int,
                  min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> Dataset:
    """Excerpt rows: `text`, `label` (the review's), `excerpt_kind` and `source` (the review's
    row index in `dataset`). A review's excerpts cycle through `kinds` from a random start, so
    with per_review = len(kinds) each review gets one of every kind. Reviews too short to
    excerpt contribute fewer rows than their count."""
    kinds = check_recipe(dataset, kinds, per_review, min_words, max_words)
    counts = excerpt_counts(len(dataset), per_review if kinds else 0.0, seed)

    def cut(batch, indices):
        rows = {"text": [], "label": [], "excerpt_kind": [], "source": []}
        for text, label, index in zip(batch["text"], batch["label"], indices):
            if counts[index] == 0:
                continue
            rng = random.Random(f"{seed}-{index}")
            parts, offset, seen = sentences(text), rng.randrange(len(kinds)), set()
            for j in range(counts[index]):
                kind = kinds[(offset + j) % len(kinds)]
                for _ in range(RETRIES):  # a new draw when the span repeats an earlier one
                    piece = excerpt(parts, kind, rng, min_words, max_words)
                    if piece not in seen:
                        break
                if piece is None or piece in seen:
                    continue
                seen.add(piece)
                for column, value in zip(rows, (piece, label, kind, index)):
                    rows[column].append(value)
        return rows

    features = Features(text=dataset.features["text"], label=dataset.features["label"],
                        excerpt_kind=Value("string"), source=Value("int64"))
    return dataset.map(cut, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       features=features, desc="cutting excerpts")


def add_excerpts(dataset: Dataset, kinds: list[str], per_review: float, seed: int,
                 min_words: int = MIN_WORDS, max_words: int = MAX_WORDS,
                 sources: Dataset | None = None) -> Dataset:
    """`dataset`'s text and label plus round(per_review * len(dataset)) excerpts, cut from
    `sources` (default: `dataset` itself) and shuffled with `seed`. With no kinds or
    per_review = 0 the dataset is returned unchanged (not shuffled): the unaugmented baseline."""
    if not kinds or per_review == 0:
        check_recipe(dataset, kinds, per_review, min_words, max_words)
        return dataset
    sources = dataset if sources is None else sources
    pieces = make_excerpts(sources, kinds, per_review * len(dataset) / len(sources), seed,
                           min_words, max_words)
    columns = ["text", "label"]
    return concatenate_datasets([dataset.select_columns(columns),
                                 pieces.select_columns(columns)]).shuffle(seed=seed)


def describe(kinds: list[str], per_review: float, seed: int, min_words: int = MIN_WORDS,
             max_words: int = MAX_WORDS, reviews: int | None = None,
             excerpts: int | None = None, sources: int | None = None) -> dict:
    """The recipe as metrics.json records it (with the row counts when given)."""
    recipe = {"kinds": list(kinds), "excerpts_per_review": per_review if kinds else 0.0,
              "words": [min_words, max_words], "seed": seed,
              "labels": "each excerpt carries its review's label",
              "text": "<br /> replaced by spaces, whitespace collapsed"}
    if reviews is not None:
        recipe["reviews"] = reviews
    if excerpts is not None:
        recipe["excerpts"] = excerpts
    if sources is not None:
        recipe["cut_from_reviews"] = sources
    return recipe
