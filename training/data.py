"""Where labelled texts come from: one function, `load_labelled`, reads a hub dataset id, a
directory of `<split>.parquet` files or a single .jsonl/.parquet file, and gives the texts with
0/1 labels, normalised as the kind of source needs (`Corpus`). Training, `training.evaluate` and
the benchmarks read every source through it; a new kind of source is a new `Corpus`.

IMDB's validation split is always carved from train (stratified, seeded), so model selection
never looks at the test split. SST-2 keeps its own validation split (872 full sentences):
reported, never trained or fitted on.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset

LABEL_NAMES = ["negative", "positive"]
DEFAULT_DATA = "stanfordnlp/imdb"
# The short-text corpus: the Stanford Sentiment Treebank's binary task (Socher et al. 2013), its
# train split the phrases of each parse tree with their own labels. A local directory
# (SHORT_DATA_DIR) holds train.parquet / validation.parquet.
DEFAULT_SHORT_DATA = "stanfordnlp/sst2"
SHORT_DATA_ENV = "SHORT_DATA_DIR"
NO_SHORT_DATA = "none"
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
FILE_SPLIT = "all"  # a file's rows, scored whole
COLUMNS = ["text", "label"]
OPTIONAL_COLUMNS = ["kind"]  # what a text is an example of (data/short_reviews.jsonl)


class DataError(ValueError):
    """The data source is missing or not shaped like labelled texts (text + 0/1 label)."""


# SST is lowercased and Penn-Treebank tokenized ("does n't", "it 's", "good , but"); people type
# "doesn't", "it's", "good, but". (pattern, replacement), applied in order.
PTB_TO_TYPED = [
    (re.compile(r"-lrb-"), "("), (re.compile(r"-rrb-"), ")"),
    (re.compile(r"``\s*|\s*''"), '"'),  # PTB's double quotes
    (re.compile(r"`\s*"), "'"),  # an opening single quote: ` they -> 'they
    (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),  # does n't -> doesn't, it 's -> it's
    (re.compile(r" ([,.!?;:%)\]}]|\.\.\.)"), r"\1"),  # no space before punctuation
    (re.compile(r"([(\[{$]) "), r"\1"),  # nor after an opening bracket or a dollar sign
]


def normalize_ptb(text: str) -> str:
    """A Penn-Treebank tokenized sentence as people type it: "it 's not bad , is n't it ?" ->
    "it's not bad, isn't it?". Already typed text comes back unchanged (but for spacing)."""
    text = " ".join(text.split())
    for pattern, replacement in PTB_TO_TYPED:
        text = pattern.sub(replacement, text)
    return text.strip()


@dataclass(frozen=True)
class Corpus:
    """A kind of source: which of its splits are labelled texts of ours, and how its text
    becomes text as people type it."""
    splits: tuple[str, ...]
    normalize: Callable[[str], str] | None = None


# IMDB: the hub dataset also has "unsupervised" (label -1), not ours
REVIEWS = Corpus(("train", "test"))
# SST-2: lowercased Penn-Treebank tokens; its hub test split has label -1, not ours
SHORT = Corpus(("train", "validation"), normalize_ptb)


def looks_like_path(source: str) -> bool:
    """A local path: it exists, or it is spelled like one (./x, ../x, /x, ~/x). Anything else,
    `stanfordnlp/imdb` included, is a hub dataset id."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def is_file_source(source) -> bool:
    return Path(source).suffix in FILE_FORMATS and not Path(source).is_dir()


def read_file(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        if FILE_FORMATS[path.suffix] == "json":
            dataset = Dataset.from_json(str(path))
        else:
            dataset = Dataset.from_parquet(str(path))
    except Exception as err:  # malformed JSON / parquet: say which file, not its text
        raise DataError(f"could not read {path}: {type(err).__name__}") from err
    if len(dataset) == 0:
        raise DataError(f"data file {path} has no rows")
    return dataset


def read_source(source: str, splits: tuple[str, ...]) -> DatasetDict:
    """The raw splits of a file, a directory of <split>.parquet files or a hub dataset id."""
    if is_file_source(source):
        return DatasetDict({FILE_SPLIT: read_file(Path(source).expanduser())})
    if not looks_like_path(source):
        try:
            return load_dataset(source)
        except Exception as err:  # hub offline, unknown name: say which source failed
            raise DataError(f"could not load dataset {source!r}: {err}") from err
    path = Path(source).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory {source} does not exist")
    files = {split: str(path / f"{split}.parquet") for split in splits
             if (path / f"{split}.parquet").is_file()}
    if not files:
        raise DataError(f"data directory {source} has no "
                        f"{' or '.join(f'{split}.parquet' for split in splits)}")
    return load_dataset("parquet", data_files=files)


def check_labelled(dataset, split: str) -> None:
    missing = set(COLUMNS) - set(dataset.column_names)
    if missing:
        raise DataError(f"split {split!r} lacks column(s) {sorted(missing)}; "
                        f"it has {dataset.column_names}")
    labels = set(dataset.unique("label"))
    if not labels <= {0, 1}:
        raise DataError(f"split {split!r} has labels {sorted(labels)}; expected 0=negative, "
                        "1=positive")


def load_labelled(source: str, corpus: Corpus = REVIEWS,
                  only: tuple[str, ...] | None = None) -> DatasetDict:
    """The labelled splits of `source` (a hub id, a directory or a file, whose rows come as
    split FILE_SPLIT), or `only` those of them: columns text, label as
    ClassLabel(negative, positive), and kind where the source has one; the text normalised as
    `corpus` says."""
    wanted = tuple(only or corpus.splits)
    raw = read_source(source, wanted)
    splits = {}
    for split, dataset in raw.items():
        if split not in wanted and split != FILE_SPLIT:
            continue
        if "text" not in dataset.column_names and "sentence" in dataset.column_names:
            dataset = dataset.rename_column("sentence", "text")  # SST-2's hub name for it
        check_labelled(dataset, split)
        columns = COLUMNS + [name for name in OPTIONAL_COLUMNS if name in dataset.column_names]
        dataset = dataset.select_columns(columns).cast_column(
            "label", ClassLabel(names=LABEL_NAMES))
        if corpus.normalize is not None:
            dataset = dataset.map(lambda row: {"text": corpus.normalize(row["text"])},
                                  desc=f"normalising {split}")
        splits[split] = dataset
    return DatasetDict(splits)


def load_reviews(source: str, validation_size: int = 2000,
                 seed: int = 42) -> tuple[DatasetDict, dict]:
    """IMDB-style reviews: splits train / validation (carved from train) / test (where the
    source has one), and a description of how they were made."""
    raw = load_labelled(source, REVIEWS)
    if "train" not in raw:
        raise DataError(f"dataset {source!r} has no train split; it has {sorted(raw)}")
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


def default_short_data() -> str:
    """$SHORT_DATA_DIR when set; else the hub id, or `none` when the hub is switched off."""
    if os.environ.get(SHORT_DATA_ENV):
        return os.environ[SHORT_DATA_ENV]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return NO_SHORT_DATA if offline else DEFAULT_SHORT_DATA
