"""Word-level explanations: which words pushed the model to its answer, and how hard.

Integrated Gradients (Sundararajan et al. 2017) through captum's `LayerIntegratedGradients`, on
the output of the encoder's embedding layer. The baseline is the same text with every token
replaced by [PAD] ([CLS] and [SEP] kept), so each word's score is its share of the predicted
class's logit above that of an empty review: the scores of a text sum to
logit(text) - logit(baseline) (IG's completeness, checked in tests/test_explain.py).

Precision: fp32. With bf16 autocast the attributions miss the logit difference by more than
the 5 % tests/test_explain.py accepts (measured: docs/PERFORMANCE.md), so the handler gives the
explainer fp32 weights and no autocast whatever the serving precision (`autocast_dtype` stays
for measuring that).

Cost is `n_steps` forward and backward passes per text, so the work is batched like inference:
texts grouped by length under a token budget, and captum's `internal_batch_size` packs several
texts times several integration steps into one pass, padded to a multiple of 32 tokens.
Token scores (summed over the hidden dimension) are merged into the tokenizer's words, with
positions in the caller's original text (`encode_reviews(..., return_offsets=True)`).
"""
import torch
from captum.attr import LayerIntegratedGradients

from handler.inference import micro_batches, pad_batch


class Explainer:
    def __init__(self, model, pad_token_id: int, n_steps: int = 20, token_budget: int = 8192,
                 autocast_dtype=None, pad_to_multiple_of: int = 32):
        embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
        if not isinstance(embeddings, torch.nn.Module):
            raise ValueError(f"{type(model).__name__} has no embedding layer at "
                             "base_model.embeddings: explanations need a BERT-family encoder")
        # gradients are only needed at the embedding output: no weight gradients, smaller graphs
        model.requires_grad_(False)
        self.model = model
        self.pad_token_id = pad_token_id
        self.n_steps = n_steps
        self.token_budget = token_budget
        self.autocast_dtype = autocast_dtype
        self.pad_to_multiple_of = pad_to_multiple_of
        self.ig = LayerIntegratedGradients(self.logits, embeddings)

    def logits(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        device_type = input_ids.device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            return self.model(**inputs).logits.float()

    @staticmethod
    def baseline(input_ids: torch.Tensor, lengths: list[int], pad_token_id: int) -> torch.Tensor:
        """[PAD] everywhere except each text's first ([CLS]) and last ([SEP]) token."""
        baseline = torch.full_like(input_ids, pad_token_id)
        rows = torch.arange(len(lengths), device=input_ids.device)
        last = torch.tensor(lengths, device=input_ids.device) - 1
        baseline[:, 0] = input_ids[:, 0]
        baseline[rows, last] = input_ids[rows, last]
        return baseline

    def batches(self, encoded: dict, token_budget: int) -> list[tuple[list[int], dict]]:
        """Texts grouped by length so one integration step of a group fits the token budget;
        each group padded on the model's device."""
        device = next(self.model.parameters()).device
        limit = getattr(self.model.config, "max_position_embeddings", None)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        return [(indices, pad_batch(encoded, indices, self.pad_token_id, device,
                                    self.pad_to_multiple_of, limit))
                for indices in micro_batches(lengths, token_budget, len(lengths),
                                             self.pad_to_multiple_of)]

    def token_attributions(self, encoded: dict, targets: list[int],
                           token_budget: int | None = None) -> list[list[float]]:
        """Per text, each token's attribution to the logit of class `targets[i]` ([CLS] and
        [SEP] included, always 0), summed over the hidden dimension, in float32."""
        token_budget = token_budget or self.token_budget
        lengths = [len(ids) for ids in encoded["input_ids"]]
        scores = [None] * len(lengths)
        # TorchServe's own handlers run under inference_mode; gradients are needed here
        with torch.inference_mode(False), torch.enable_grad():
            for indices, inputs in self.batches(encoded, token_budget):
                ids = inputs["input_ids"]
                baseline = self.baseline(ids, [lengths[i] for i in indices], self.pad_token_id)
                # rows per pass: the whole group for as many steps as the budget holds
                rows = max(len(indices), token_budget // ids.shape[1])
                attributions = self.ig.attribute(
                    ids, baselines=baseline, target=[targets[i] for i in indices],
                    additional_forward_args=(inputs["attention_mask"],
                                             inputs.get("token_type_ids")),
                    n_steps=self.n_steps, internal_batch_size=rows)
                per_token = attributions.float().sum(dim=-1).cpu()
                for row, i in enumerate(indices):
                    scores[i] = per_token[row, :lengths[i]].tolist()
        return scores

    @torch.inference_mode()
    def target_logits(self, encoded: dict, targets: list[int]) -> tuple[list[float], list[float]]:
        """(logit at the text, logit at its baseline) of each text's target class: what the
        attributions of a text should add up to is the difference (completeness)."""
        lengths = [len(ids) for ids in encoded["input_ids"]]
        at_input, at_baseline = [None] * len(lengths), [None] * len(lengths)
        for indices, inputs in self.batches(encoded, self.token_budget):
            extra = (inputs["attention_mask"], inputs.get("token_type_ids"))
            baseline = self.baseline(inputs["input_ids"], [lengths[i] for i in indices],
                                     self.pad_token_id)
            for out, ids in ((at_input, inputs["input_ids"]), (at_baseline, baseline)):
                logits = self.logits(ids, *extra).cpu()
                for row, i in enumerate(indices):
                    out[i] = logits[row, targets[i]].item()
        return at_input, at_baseline


def word_attributions(text: str, offsets: list, word_ids: list, scores: list[float]) -> list[dict]:
    """Merge token scores into the words they came from, in text order: a word is a run of
    consecutive kept tokens of one tokenizer word (WordPiece pieces "dread" + "##ful"); its
    `word` is exactly `text[start:end]`. Tokens dropped by truncation have no entry."""
    words, last_word = [], None
    for span, word_id, score in zip(offsets, word_ids, scores):
        if span is None:  # [CLS] / [SEP]
            last_word = None
            continue
        start, end = span
        if words and word_id is not None and word_id == last_word and start <= words[-1]["end"]:
            words[-1]["end"] = max(words[-1]["end"], end)
            words[-1]["score"] += score
        else:
            words.append({"start": start, "end": end, "score": score})
        last_word = word_id
    return [{"word": text[w["start"]:w["end"]], "start": w["start"], "end": w["end"],
             "score": round(w["score"], 6)} for w in words]
