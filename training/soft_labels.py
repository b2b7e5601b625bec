"""The teacher's soft labels: its logits for each text, keyed by the text as normalised for
training (training.data.normalize_ptb, so the hub's SST-2 and a local copy give the same key),
saved as one parquet file with its provenance in a JSON file beside it.

Two kinds of rows: `sst2_train` (SST-2 train phrases, with their hard label) and `transfer`
(pieces cut from IMDB train reviews, no label of their own: the teacher labels each piece on its
merit). A transfer row keeps `review`, a digest of the review it was cut from, so a student drops
the pieces of the reviews it holds out for validation and calibration.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.data import normalize_ptb

FORMAT_VERSION = 1
SST2_TRAIN, TRANSFER = "sst2_train", "transfer"
NO_LABEL = -1


class SoftLabelError(ValueError):
    """The soft-label file is missing, malformed or made for other texts."""


def key(text: str) -> str:
    return normalize_ptb(text)


def review_digest(text: str) -> str:
    """A short, stable name for a review: transfer pieces point at their review with it."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance_path(path: Path) -> Path:
    return path.with_suffix(".json")


@dataclass
class SoftLabels:
    texts: list[str]          # keys, normalised
    logits: np.ndarray        # (texts, 2) float32: the teacher's, before any temperature
    kinds: list[str]          # SST2_TRAIN or TRANSFER
    labels: list[int]         # the hard label, NO_LABEL for transfer pieces
    reviews: list[str]        # transfer pieces: review_digest of their review; else ""

    def save(self, path: Path, provenance: dict) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"text": self.texts,
                          "logit_negative": self.logits[:, 0].astype(np.float32),
                          "logit_positive": self.logits[:, 1].astype(np.float32),
                          "kind": self.kinds, "label": np.asarray(self.labels, dtype=np.int8),
                          "review": self.reviews})
        pq.write_table(table, path, compression="zstd")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        counts = {kind: self.kinds.count(kind) for kind in (SST2_TRAIN, TRANSFER)}
        provenance_path(path).write_text(json.dumps(
            {"format_version": FORMAT_VERSION, "file": path.name, "sha256": sha,
             "rows": counts, **provenance}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> "SoftLabels":
        path = Path(path)
        if not path.is_file():
            raise SoftLabelError(f"soft-label file {path} does not exist")
        try:
            table = pq.read_table(path).to_pydict()
            logits = np.stack([table["logit_negative"], table["logit_positive"]], axis=1)
            labels = cls(table["text"], logits.astype(np.float32), table["kind"],
                         [int(x) for x in table["label"]], table["review"])
        except (pa.ArrowException, KeyError, OSError, ValueError) as err:
            raise SoftLabelError(f"could not read soft-label file {path}: "
                                 f"{type(err).__name__}: {err}") from err
        return labels

    def table(self) -> dict[str, np.ndarray]:
        """key -> the teacher's logits."""
        return dict(zip(self.texts, self.logits))

    def transfer(self, held_out_reviews: set[str]):
        """(texts, logits) of the transfer pieces not cut from `held_out_reviews` (digests)."""
        rows = [i for i, (kind, review) in enumerate(zip(self.kinds, self.reviews))
                if kind == TRANSFER and review not in held_out_reviews]
        return [self.texts[i] for i in rows], self.logits[rows]


def teacher_logits_for(texts: list[str], labels: SoftLabels, path: Path,
                       min_match: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(logits, found) for `texts`: the teacher's logits where the file has the text, found
    False (and zeros) where not. Fewer than `min_match` of them found: the file was made for
    other texts, an error that names it."""
    table = labels.table()
    logits = np.zeros((len(texts), 2), dtype=np.float32)
    found = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        row = table.get(key(text))
        if row is not None:
            logits[i], found[i] = row, True
    if texts and found.mean() < min_match:
        raise SoftLabelError(
            f"soft-label file {path} has the teacher's logits for only {found.sum()} of "
            f"{len(texts)} short training texts: it was made for other texts (another corpus "
            "or normalisation); make it anew with `make teacher`")
    return logits, found
