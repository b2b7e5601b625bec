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
