"""How a run divides its data: reviews trained on, held out for calibration, or spare (excerpts
may be cut from them); SST-2 phrases trained on and whole sentences held out; the texts the
calibrator is fitted on. Every draw is seeded, so a seed gives the same division anywhere.
"""
import re

from datasets import concatenate_datasets

from training.augment import make_excerpts
from training.data import COLUMNS, DataError, take


def carve_calibration(pool, train_set, size: int, seed: int):
    """(calibration reviews or None, training reviews, spare reviews, how they were chosen).

    The reviews of `pool` (the train split after the validation carve) that the sample cap left
    out, when there are enough (the training reviews are then exactly those without
    calibration); else a stratified carve from the training reviews, if it leaves 3/4 of them.
    The spare reviews are the rest of those the cap left out: excerpts may be cut from them.
    """
    def rows_from(dataset, start: int):  # select(range(n, n)) raises in datasets
        return dataset.select(list(range(start, len(dataset))))

    rest = rows_from(pool.shuffle(seed=seed), len(train_set))  # take() drew train_set first
    if size == 0:
        return None, train_set, rest, "no temperature (--calibration-size 0)"
    if len(rest) >= size:
        spare = rows_from(rest.shuffle(seed=seed), size)  # take() keeps the first `size`
        return (take(rest, size, seed), train_set, spare,
                f"{size} train-split reviews left out of training by the sample cap")
    if size <= len(train_set) // 4:
        carved = train_set.train_test_split(test_size=size, seed=seed, stratify_by_column="label")
        return (carved["test"], carved["train"], rest,
                f"{size} reviews carved from the training reviews (stratified, seed {seed})")
    return None, train_set, rest, (f"no temperature: {size} calibration reviews would take more "
                                   f"than a quarter of the {len(train_set)} training reviews")


def excerpt_sources(train_set, spare, count: int | None):
    """The reviews excerpts are cut from: the training reviews, then spare ones up to `count`.

    `count` is held between the training reviews and all there are, with a note when it moves:
    a preset's count must work with any --max-train-samples and on a small data set."""
    if count is None:
        return train_set
    available = len(train_set) + len(spare)
    held = min(max(count, len(train_set)), available)
    if held != count:
        print(f"note: --excerpt-reviews {count}: excerpts are cut from {held} reviews (the "
              f"{len(train_set)} training reviews, then up to {len(spare)} left out of training, "
              "calibration and validation)", flush=True)
    if held == len(train_set):
        return train_set
    extra = spare.select_columns(COLUMNS).select(range(held - len(train_set)))
    return concatenate_datasets([train_set.select_columns(COLUMNS), extra])


def calibration_texts(reviews, source: str, kinds: list[str], short, seed: int):
    """(the held-out texts a calibrator is fitted on, what they are in words): the `reviews`,
    one excerpt of each in `kinds`, and the held-out `short` sentences; (None, source) when
    there are no reviews."""
    if reviews is None:
        return None, source
    texts = reviews.select_columns(COLUMNS)
    if kinds:
        pieces = make_excerpts(reviews, kinds, 1.0, seed)
        texts = concatenate_datasets([texts, pieces.select_columns(COLUMNS)])
        source += f", and {len(pieces)} excerpts of them ({' / '.join(kinds)} sentences)"
    if short is not None and len(short):
        texts = concatenate_datasets([texts, short.select_columns(COLUMNS)])
        source += f", and {len(short)} short-corpus train sentences left out of training " \
                  "with every phrase of theirs"
    return texts, source


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
    return concatenate_datasets([train_rows.select_columns(COLUMNS),
                                 short_train.select_columns(COLUMNS)]).shuffle(seed=seed)
