"""The run's fast tokenizer read from its tokenizer.json with the `tokenizers` library alone, so
a worker never imports transformers, a large share of a worker's start. It offers the part of a
transformers fast tokenizer that `encode_reviews` uses and gives the same ids, offsets and word
ids (tests/test_encoding.py).
"""
import json
from pathlib import Path

from tokenizers import Tokenizer


class Encodings(dict):
    """`input_ids` (and `offset_mapping`) per text, and `word_ids(i)`, as transformers' batch."""

    def __init__(self, encodings: list, offsets: bool):
        super().__init__(input_ids=[encoding.ids for encoding in encodings])
        if offsets:
            self["offset_mapping"] = [encoding.offsets for encoding in encodings]
        self.encodings = encodings

    def word_ids(self, index: int) -> list:
        return self.encodings[index].word_ids


class RunTokenizer:
    def __init__(self, directory):
        directory = Path(directory)
        self.backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
        # transformers sets truncation and padding for each call; a saved file may hold a call's
        self.backend.no_truncation()
        self.backend.no_padding()
        special = json.loads((directory / "tokenizer_config.json").read_text())
        self.cls_token_id, self.sep_token_id, self.pad_token_id = (
            self.token_id(special.get(name)) for name in ("cls_token", "sep_token", "pad_token"))
        # a model with token type embeddings takes token_type_ids (BERT, MiniLM); DistilBERT not
        model = json.loads((directory / "config.json").read_text())
        self.model_input_names = ["input_ids", "attention_mask"] + (
            ["token_type_ids"] if "type_vocab_size" in model else [])

    def token_id(self, token) -> int | None:
        token = token.get("content") if isinstance(token, dict) else token
        return None if token is None else self.backend.token_to_id(token)

    def num_special_tokens_to_add(self) -> int:
        processor = self.backend.post_processor
        return processor.num_special_tokens_to_add(False) if processor is not None else 0

    def __call__(self, texts: list[str], add_special_tokens: bool = True,
                 return_attention_mask: bool = False, return_token_type_ids: bool = False,
                 return_offsets_mapping: bool = False, verbose: bool = False) -> Encodings:
        """encode_reviews' call: ids (and offsets) only; masks and types are its own."""
        if return_attention_mask or return_token_type_ids:
            raise ValueError("RunTokenizer returns ids and offsets only")
        return Encodings(self.backend.encode_batch(texts, add_special_tokens=add_special_tokens),
                         return_offsets_mapping)
