"""The hand-written short-review set is well formed: schema, lengths, balance, no duplicates."""
import json
from collections import Counter

from tests.conftest import REPO

PATH = REPO / "data" / "short_reviews.jsonl"
KINDS = {"plain", "mixed", "negation", "sarcasm"}


def rows() -> list[dict]:
    return [json.loads(line) for line in PATH.read_text(encoding="utf-8").splitlines()]


def test_every_row_has_the_schema():
    for row in rows():
        assert set(row) == {"text", "label", "kind"}, row
        assert isinstance(row["text"], str) and row["text"] == row["text"].strip()
        assert row["label"] in (0, 1) and not isinstance(row["label"], bool)
        assert row["kind"] in KINDS


def test_reviews_are_short():
    lengths = [len(row["text"].split()) for row in rows()]
    assert min(lengths) >= 3 and max(lengths) <= 40


def test_enough_rows_and_every_kind():
    data = rows()
    assert len(data) >= 200
    assert {row["kind"] for row in data} == KINDS


def test_labels_balanced_overall_and_per_kind():
    counts = Counter((row["kind"], row["label"]) for row in rows())
    assert sum(counts[k, 1] for k in KINDS) == sum(counts[k, 0] for k in KINDS)
    for kind in KINDS:
        assert counts[kind, 0] == counts[kind, 1] >= 25, kind


def test_no_duplicates_ignoring_case_and_spacing():
    keys = Counter(" ".join(row["text"].lower().split()) for row in rows())
    assert [text for text, n in keys.items() if n > 1] == []
