"""Real IMDB review texts for the benchmark: the held-out validation split, carved from
train.parquet exactly as training carved it (training.data.load_reviews), so the texts replayed
under load are also the ones the accuracy check scores and none of them was trained on.
The data directory comes from --data or $IMDB_DATA_DIR; it is read in place, never copied."""
import os
from pathlib import Path


def data_dir(path: str | None) -> str:
    path = path or os.environ.get("IMDB_DATA_DIR")
    if not path:
        raise SystemExit("error: give --data DIR or set IMDB_DATA_DIR to a directory holding "
                         "the IMDB train.parquet")
    if not (Path(path) / "train.parquet").is_file():
        raise SystemExit(f"error: {path} has no train.parquet")
    return path


def load_split(path: str | None, count: int, validation_size: int = 2000,
               seed: int = 42) -> tuple[list[str], list[int]]:
    """`count` held-out reviews (texts, labels), a seeded shuffle of the validation split."""
    from training.data import load_reviews, take
    splits, _ = load_reviews(data_dir(path), validation_size, seed)
    subset = take(splits["validation"], count, seed)
    return list(subset["text"]), list(subset["label"])


def load_texts(path: str | None, count: int = 2000, validation_size: int = 2000,
               seed: int = 42) -> list[str]:
    return load_split(path, count, validation_size, seed)[0]


SHORT_FALLBACK = Path(__file__).resolve().parent.parent / "data" / "short_reviews.jsonl"


def load_short(path: str | None, count: int = 2000, seed: int = 42) -> tuple[list[str], str]:
    """(`count` one-sentence reviews, where they came from): SST-2's validation sentences from
    the directory `path` (or $SST2_DATA_DIR) holding validation.parquet, typed as people type
    them (training.data.normalize_ptb); without that directory the repository's
    data/short_reviews.jsonl. At most `count` of them, in a seeded shuffle."""
    import random

    from training.data import FILE_SPLIT, SHORT, load_labelled
    path = path or os.environ.get("SST2_DATA_DIR")
    source = Path(path) / "validation.parquet" if path else None
    if source is not None and source.is_file():
        texts = list(load_labelled(path, SHORT, only=("validation",))["validation"]["text"])
    else:
        source = SHORT_FALLBACK
        texts = list(load_labelled(str(source))[FILE_SPLIT]["text"])
    if not texts:
        raise SystemExit(f"error: {source} holds no texts")
    random.Random(seed).shuffle(texts)
    return [texts[i % len(texts)] for i in range(min(count, len(texts)))], str(source)
