"""Load IMDB-style review data (HF hub name or a local parquet directory) into train/validation.

The validation split is always carved from train (stratified, seeded), so model selection never
looks at the test split; a test split, when the source has one, is kept for the final report.
"""
from pathlib import Path

from datasets import ClassLabel, DatasetDict, load_dataset

LABEL_NAMES = ["negative", "positive"]
DEFAULT_DATA = "stanfordnlp/imdb"
SPLITS = ("train", "test")  # the hub dataset also has "unsupervised" (label -1): not ours


class DataError(ValueError):
    """The data source is missing or not shaped like IMDB (text + 0/1 label)."""


def looks_like_path(source: str) -> bool:
    """A local path: it exists, or it is spelled like one (./x, ../x, /x, ~/x). Anything else,
    `stanfordnlp/imdb` included, is a hub dataset id."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def load_source(source: str) -> DatasetDict:
    """A local directory with train.parquet (and maybe test.parquet), or a hub dataset name."""
    if not looks_like_path(source):
        try:
            return load_dataset(source)
        except Exception as err:  # hub offline, unknown name: say which source failed
            raise DataError(f"could not load dataset {source!r}: {err}") from err
    path = Path(source).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory {source} does not exist")
    files = {split: str(path / f"{split}.parquet") for split in SPLITS
             if (path / f"{split}.parquet").is_file()}
    if "train" not in files:
        raise DataError(f"data directory {source} has no train.parquet")
    return load_dataset("parquet", data_files=files)


def check_reviews(dataset, split: str) -> None:
    missing = {"text", "label"} - set(dataset.column_names)
    if missing:
        raise DataError(f"split {split!r} lacks column(s) {sorted(missing)}; "
                        f"it has {dataset.column_names}")
    labels = set(dataset.unique("label"))
    if not labels <= {0, 1}:
        raise DataError(f"split {split!r} has labels {sorted(labels)}; expected 0=negative, "
                        "1=positive")


def load_reviews(source: str, validation_size: int = 2000, seed: int = 42) -> tuple[DatasetDict, dict]:
    """Return splits train / validation (/ test) and a description of how they were made."""
    raw = load_source(source)
    if "train" not in raw:
        raise DataError(f"dataset {source!r} has no train split; it has {sorted(raw)}")
    raw = DatasetDict({split: ds for split, ds in raw.items() if split in SPLITS})
    for split, dataset in raw.items():
        check_reviews(dataset, split)
    raw = DatasetDict({split: ds.select_columns(["text", "label"])
                       .cast_column("label", ClassLabel(names=LABEL_NAMES))
                       for split, ds in raw.items()})
    if not 0 < validation_size < len(raw["train"]):
        raise DataError(f"validation size {validation_size} must be between 1 and "
                        f"{len(raw['train']) - 1} (train has {len(raw['train'])} reviews)")
    carved = raw["train"].train_test_split(test_size=validation_size, seed=seed,
                                           stratify_by_column="label")
    splits = DatasetDict(train=carved["train"], validation=carved["test"])
    if "test" in raw:
        splits["test"] = raw["test"]
    info = {
        "data_source": source,
        "validation": f"carved from train: {validation_size} reviews, stratified by label, "
                      f"seed {seed}",
        "split_sizes_available": {name: len(ds) for name, ds in splits.items()},
    }
    return splits, info


def take(dataset, max_samples: int | None, seed: int):
    """A seeded random subset (the parquet is ordered negative first, so never take a prefix)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))
