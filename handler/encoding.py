"""Turn raw review text into model inputs. Training, evaluation and the TorchServe handler all
call `encode_reviews`, so what the model sees in production is exactly what it was trained on.

The settings a run was trained with (`EncodingSettings`) are written to the run directory as
`encoding.json`, travel in the model archive, and are read back by the handler and by
`training.evaluate`: serving never guesses them.

Truncation is head+tail: keep the first quarter of the token budget and the last three quarters.
Sun et al. 2019 ("How to Fine-Tune BERT for Text Classification?") found this beats head-only on
IMDB, where reviews often end with the verdict. Texts are clipped by characters first (keeping
their head and tail) so a 1 MB body cannot stall the tokenizer; the clip is generous enough that
it never changes which tokens survive for ordinary text.

IMDB reviews carry HTML line breaks (`<br />`); reviews typed into an API do not. With
`normalize_breaks` they are replaced by spaces of the same length before tokenizing, in training
and serving alike, so character positions in the caller's text stay valid.
"""
import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

DEFAULT_MAX_LENGTH = 256
HEAD_FRACTION = 0.25
CHARS_PER_TOKEN_CAP = 16  # a WordPiece token is rarely longer than this; see clip_chars
SETTINGS_FILE = "encoding.json"
HTML_BREAK = re.compile(r"<br\s*/?\s*>", re.IGNORECASE)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodingSettings:
    max_length: int = DEFAULT_MAX_LENGTH
    head_fraction: float = HEAD_FRACTION
    chars_per_token: int = CHARS_PER_TOKEN_CAP
    normalize_breaks: bool = True

    def save(self, directory) -> Path:
        path = Path(directory) / SETTINGS_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory) -> "EncodingSettings":
        """The settings a run directory (or an unpacked archive) was trained with. A run without
        encoding.json (an older one): max_length from metrics.json, no break normalisation."""
        directory = Path(directory)
        if (directory / SETTINGS_FILE).is_file():
            return cls(**json.loads((directory / SETTINGS_FILE).read_text()))
        metrics = directory / "metrics.json"
        if metrics.is_file():
            max_length = json.loads(metrics.read_text()).get("max_length", DEFAULT_MAX_LENGTH)
            return cls(max_length=int(max_length), normalize_breaks=False)
        raise FileNotFoundError(f"{directory} has neither {SETTINGS_FILE} nor metrics.json")

    @classmethod
    def serving(cls, directory, max_length: int | None = None) -> "EncodingSettings":
        """How texts are encoded for a run (or unpacked archive) everywhere it is scored: the
        trained settings; `max_length` (model-config.yaml, a benchmark flag) may lower the
        length, never raise it (said in the log); never past the encoder's positions
        (config.json's max_position_embeddings)."""
        trained = cls.load(directory)
        if max_length and max_length > trained.max_length:
            logger.warning("max_length %s is above the %d tokens the model was trained with: "
                           "encoding at %d", max_length, trained.max_length, trained.max_length)
        elif max_length and max_length < trained.max_length:
            logger.info("max_length %s lowers the trained %d tokens", max_length,
                        trained.max_length)
        config = Path(directory) / "config.json"
        positions = json.loads(config.read_text()).get("max_position_embeddings") \
            if config.is_file() else None
        return trained.capped(max_length or None).capped(positions)

    def capped(self, max_length: int | None) -> "EncodingSettings":
        """These settings with max_length lowered to `max_length` (never raised)."""
        if max_length is None or max_length >= self.max_length:
            return self
        return replace(self, max_length=int(max_length))


def normalize_text(text: str) -> str:
    """`<br />` and friends become spaces of the same length (positions are kept)."""
    if "<" not in text:
        return text
    return HTML_BREAK.sub(lambda match: " " * len(match.group()), text)


def clip_chars(text: str, max_chars: int, head_fraction: float = HEAD_FRACTION) -> str:
    """Keep the head and tail of an over-long text, in the same 1:3 ratio as the tokens."""
    if len(text) <= max_chars:
        return text
    head = int(max_chars * head_fraction)
    tail = max_chars - head
    return text[:head] + " " + text[-tail:]


def unclip_position(position: int, length: int, max_chars: int,
                    head_fraction: float = HEAD_FRACTION) -> int:
    """Where a character position in `clip_chars`'s result lies in the `length`-character
    text it was clipped from (the inserted space maps to the end of the head)."""
    if length <= max_chars:
        return position
    head = int(max_chars * head_fraction)
    return position if position <= head else position - head - 1 + length - (max_chars - head)


def head_tail(ids: list, budget: int, head_fraction: float = HEAD_FRACTION) -> list:
    """The first `budget // 4` and the last `budget - budget // 4` items of `ids`."""
    if len(ids) <= budget:
        return ids
    head = int(budget * head_fraction)
    return ids[:head] + ids[len(ids) - (budget - head):]


def encode_reviews(tokenizer, texts: list[str],
                   settings: EncodingSettings = EncodingSettings(),
                   return_offsets: bool = False) -> dict:
    """Tokenize a batch of reviews with one fast-tokenizer call, head+tail truncated, unpadded.

    Returns lists per text: `input_ids`, `attention_mask`, `token_type_ids` (when the model takes
    them) and `truncated` (whether any token was dropped). Padding is left to the caller
    (the training collator or the handler's micro-batches), so each batch pads to its longest.
    With `return_offsets` (explanations) also, per kept token, `offsets`: its (start, end)
    characters in the caller's original text (None for [CLS]/[SEP]) and `word_ids`: which word
    of the tokenizer's pre-tokenization it belongs to. The ids are the same either way.
    """
    if tokenizer.num_special_tokens_to_add() != 2:
        raise ValueError("encode_reviews expects a single-sequence format of [CLS] text [SEP]")
    budget = settings.max_length - 2
    if settings.normalize_breaks:
        texts = [normalize_text(t) for t in texts]
    max_chars = settings.max_length * settings.chars_per_token
    clipped = [clip_chars(t, max_chars, settings.head_fraction) for t in texts]
    batch = tokenizer(clipped, add_special_tokens=False, return_attention_mask=False,
                      return_token_type_ids=False, return_offsets_mapping=return_offsets,
                      verbose=False)
    pieces = batch["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    input_ids = [[cls] + head_tail(ids, budget, settings.head_fraction) + [sep] for ids in pieces]
    encoded = {
        "input_ids": input_ids,
        "attention_mask": [[1] * len(ids) for ids in input_ids],
    }
    if "token_type_ids" in tokenizer.model_input_names:
        encoded["token_type_ids"] = [[0] * len(ids) for ids in input_ids]
    encoded["truncated"] = [len(ids) > budget or clipped_text is not text
                            for ids, clipped_text, text in zip(pieces, clipped, texts)]
    if return_offsets:
        offsets, word_ids = [], []
        for i, text in enumerate(texts):  # normalize_text keeps positions: only the clip moves
            spans = [(unclip_position(start, len(text), max_chars, settings.head_fraction),
                      unclip_position(end, len(text), max_chars, settings.head_fraction))
                     for start, end in batch["offset_mapping"][i]]
            offsets.append([None] + head_tail(spans, budget, settings.head_fraction) + [None])
            word_ids.append([None] + head_tail(batch.word_ids(i), budget, settings.head_fraction)
                            + [None])
        encoded["offsets"], encoded["word_ids"] = offsets, word_ids
    return encoded
