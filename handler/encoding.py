"""Turn raw review text into model inputs. Training, evaluation and the TorchServe handler all
call `encode_reviews`, so what the model sees in production is exactly what it was trained on.

Truncation is head+tail: keep the first quarter of the token budget and the last three quarters.
Sun et al. 2019 ("How to Fine-Tune BERT for Text Classification?") found this beats head-only on
IMDB, where reviews often end with the verdict. Texts are clipped by characters first (keeping
their head and tail) so a 1 MB body cannot stall the tokenizer; the clip is generous enough that
it never changes which tokens survive for ordinary text.
"""

DEFAULT_MAX_LENGTH = 256
HEAD_FRACTION = 0.25
CHARS_PER_TOKEN_CAP = 16  # a WordPiece token is rarely longer than this; see clip_chars


def clip_chars(text: str, max_chars: int) -> str:
    """Keep the head and tail of an over-long text, in the same 1:3 ratio as the tokens."""
    if len(text) <= max_chars:
        return text
    head = int(max_chars * HEAD_FRACTION)
    tail = max_chars - head
    return text[:head] + " " + text[-tail:]


def head_tail(ids: list[int], budget: int) -> list[int]:
    """The first `budget // 4` and the last `budget - budget // 4` token ids of `ids`."""
    if len(ids) <= budget:
        return ids
    head = int(budget * HEAD_FRACTION)
    return ids[:head] + ids[len(ids) - (budget - head):]


def encode_reviews(tokenizer, texts: list[str], max_length: int = DEFAULT_MAX_LENGTH) -> dict:
    """Tokenize a batch of reviews with one fast-tokenizer call, head+tail truncated, unpadded.

    Returns lists per text: `input_ids`, `attention_mask`, `token_type_ids` (when the model takes
    them) and `truncated` (whether any token was dropped). Padding is left to the caller
    (the training collator or the handler's micro-batches), so each batch pads to its longest.
    """
    if tokenizer.num_special_tokens_to_add() != 2:
        raise ValueError("encode_reviews expects a single-sequence format of [CLS] text [SEP]")
    budget = max_length - 2
    clipped = [clip_chars(t, max_length * CHARS_PER_TOKEN_CAP) for t in texts]
    pieces = tokenizer(clipped, add_special_tokens=False, return_attention_mask=False,
                       return_token_type_ids=False, verbose=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    input_ids = [[cls] + head_tail(ids, budget) + [sep] for ids in pieces]
    encoded = {
        "input_ids": input_ids,
        "attention_mask": [[1] * len(ids) for ids in input_ids],
    }
    if "token_type_ids" in tokenizer.model_input_names:
        encoded["token_type_ids"] = [[0] * len(ids) for ids in input_ids]
    encoded["truncated"] = [len(ids) > budget or clipped_text is not text
                            for ids, clipped_text, text in zip(pieces, clipped, texts)]
    return encoded
