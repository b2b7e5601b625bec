"""Load IMDB-style review data (HF hub name or a local parquet directory) into train/validation,
and the short-text corpus (SST-2) mixed into training and reported beside IMDB.

The validation split is always carved from train (stratified, seeded), so model selection never
looks at the test split; a test split, when the source has one, is kept for the final report.
SST-2 keeps its own validation split (872 full sentences): reported, never trained or fitted on.
"""
import os
import re
from pathlib import Path

from datasets import ClassLabel, DatasetDict, load_dataset

LABEL_NAMES = ["negative", "positive"]
DEFAULT_DATA = "stanfordnlp/imdb"
SPLITS = ("train", "test")  # the hub dataset also has "unsupervised" (label -1): not ours
# The short-text corpus: the Stanford Sentiment Treebank's binary task (Socher et al. 2013), its
# train split the phrases of each parse tree with their own labels. Its hub test split has label
# -1: not ours. A local directory (SHORT_DATA_DIR) holds train.parquet / validation.parquet.
DEFAULT_SHORT_DATA = "stanfordnlp/sst2"
SHORT_DATA_ENV = "SHORT_DATA_DIR"
SHORT_SPLITS = ("train", "validation")
NO_SHORT_DATA = "none"


class DataError(ValueError):
    """The data source is missing or not shaped like IMDB (text + 0/1 label)."""


def looks_like_path(source: str) -> bool:
    """A local path: it exists, or it is spelled like one (./x, ../x, /x, ~/x). Anything else,
    `stanfordnlp/imdb` included, is a hub dataset id."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def load_source(source: str, splits: tuple[str, ...] = SPLITS) -> DatasetDict:
    """A local directory with train.parquet (and maybe the other `splits`' files), or a hub
    dataset name."""
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


# --- the short-text corpus -------------------------------------------------------------------

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


def default_short_data() -> str:
    """$SHORT_DATA_DIR when set; else the hub id, or `none` when the hub is switched off."""
    if os.environ.get(SHORT_DATA_ENV):
        return os.environ[SHORT_DATA_ENV]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return NO_SHORT_DATA if offline else DEFAULT_SHORT_DATA


def load_short_texts(source: str) -> DatasetDict:
    """SST-2 from the hub id (columns idx, sentence, label; its unlabelled test split dropped) or
    a directory with train.parquet (and validation.parquet), columns text, label. The text comes
    back normalised by normalize_ptb, the label as ClassLabel(negative, positive)."""
    raw = load_source(source, SHORT_SPLITS)
    raw = DatasetDict({split: ds for split, ds in raw.items() if split in SHORT_SPLITS})
    if "train" not in raw:
        raise DataError(f"short-text data {source!r} has no train split")
    splits = {}
    for split, dataset in raw.items():
        if "text" not in dataset.column_names and "sentence" in dataset.column_names:
            dataset = dataset.rename_column("sentence", "text")  # the hub's name for it
        check_reviews(dataset, split)
        dataset = dataset.select_columns(["text", "label"]).cast_column(
            "label", ClassLabel(names=LABEL_NAMES))
        splits[split] = dataset.map(lambda row: {"text": normalize_ptb(row["text"])},
                                    desc=f"normalising {split}")
    return DatasetDict(splits)


def word_count(text: str) -> int:
    return len(text.split())


WORD = re.compile(r"[\w']+")


def words_of(text: str) -> str:
    """The text's words without its punctuation: "it's not bad, isn't it?" -> "it's not bad
    isn't it", so that a sub-phrase matches its sentence wherever the sentence had a comma."""
    return " ".join(WORD.findall(text.lower()))


def spans(words: str, min_words: int) -> set[str]:
    """Every run of at least `min_words` consecutive words of `words`, itself included."""
    tokens = words.split()
    return {" ".join(tokens[i:j]) for i in range(len(tokens))
            for j in range(i + min_words, len(tokens) + 1)}


def sentences_first(words: list[str], wanted: int) -> list[int]:
    """The indices of the first `wanted` phrases (their `words_of`) that no other phrase
    contains: the roots of SST's parse trees, whole sentences like SST-2 validation's."""
    keys = [f" {text} " for text in words]
    having = {}  # word -> the phrases with it (an inverted index: who may contain a phrase)
    for i, key in enumerate(keys):
        for word in set(key.split()):
            having.setdefault(word, []).append(i)
    roots = []
    for i in range(len(keys)):
        if len(roots) == wanted:
            break
        rarest = min(set(keys[i].split()), key=lambda word: len(having[word]), default=None)
        if rarest is None or not any(keys[i] in keys[j] and len(keys[j]) > len(keys[i])
                                     for j in having[rarest]):
            roots.append(i)
    return roots


def split_short(train, count: int | None, calibration: int, min_words: int, seed: int):
    """(training rows, calibration rows) from the short corpus' train split: the phrases of at
    least `min_words` words, shuffled with `seed`.

    Held out for fitting the temperature: the first `calibration` whole sentences in that order
    (at most a quarter of the phrases), phrases that no other phrase contains. None of their
    phrases is trained on, so they are as new to the model as SST-2 validation's sentences; held
    out as single phrases, nine in ten shared words with a trained phrase of their sentence, and
    the temperature came out too low (docs/EXPERIMENTS.md). Trained on: the next `count` of the
    other phrases (None: all of them)."""
    kept = train.filter(lambda row: word_count(row["text"]) >= min_words,
                        desc=f"phrases of >= {min_words} words")
    if len(kept) < 2:
        raise DataError(f"only {len(kept)} short texts have >= {min_words} words")
    kept = kept.shuffle(seed=seed)
    words = [words_of(text) for text in kept["text"]]
    held = sentences_first(words, min(calibration, len(kept) // 4))
    inside = set().union(*(spans(words[i], min_words) for i in held))
    rest = [i for i in range(len(words)) if words[i] not in inside]
    end = len(rest) if count is None else min(len(rest), count)
    return kept.select(rest[:end]), kept.select(held)


def mix_short(train_rows, short_train, seed: int):
    """The training rows (text, label) with the short texts mixed in, shuffled with `seed`."""
    from datasets import concatenate_datasets
    return concatenate_datasets([train_rows.select_columns(["text", "label"]),
                                 short_train.select_columns(["text", "label"])]).shuffle(seed=seed)
