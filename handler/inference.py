"""Batched forward passes over encoded reviews: sort by length, cut micro-batches under a token
budget, pad each to its own longest text, and return logits (or calibrated probabilities) in
the original order.
Every runtime (handler/runtime.py) is scored through this one loop, by the handler,
`training.evaluate` and the benchmarks alike, so they all score texts identically.
"""
import logging

import torch

from handler.calibration import UNCALIBRATED, Calibrator

logger = logging.getLogger(__name__)


# What one more forward pass costs beyond its padded tokens, in tokens: micro_batches splits a
# batch where the padding it saves is worth more (measured: docs/PERFORMANCE.md).
PASS_COST_TOKENS = 32


def micro_batches(lengths: list[int], token_budget: int, max_batch: int,
                  multiple: int = 1) -> list[list[int]]:
    """Indices in groups of consecutive lengths (sorted) that cost the fewest padded tokens:
    each group pads to its longest text rounded up to `multiple`, and each costs
    PASS_COST_TOKENS more; a group has at most `max_batch` texts and rows x longest within
    `token_budget` (a single text always fits). Cut by dynamic programming: one-line texts
    padded to the longest of a mixed batch would compute mostly padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    padded = [-(-lengths[i] // multiple) * multiple for i in order]
    best, cut = [0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(max(0, end - max_batch), end):
            rows = end - start
            if rows > 1 and rows * padded[end - 1] > token_budget:
                continue
            cost = best[start] + rows * padded[end - 1] + PASS_COST_TOKENS
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches, end = [], len(order)
    while end:
        batches.append(order[cut[end]:end])
        end = cut[end]
    return batches[::-1]


def pad_batch(encoded: dict, indices: list[int], pad_token_id: int, device,
              multiple: int = 1, limit: int | None = None) -> dict:
    """Right-pad the selected texts to the longest among them (dynamic padding), rounded up
    to `multiple` tokens but never past `limit` (the encoder's positions)."""
    longest = max(len(encoded["input_ids"][i]) for i in indices)
    rounded = -(-longest // multiple) * multiple
    longest = max(longest, min(rounded, limit or rounded))
    tensors = {}
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        if name not in encoded:
            continue
        fill = pad_token_id if name == "input_ids" else 0
        rows = [encoded[name][i] + [fill] * (longest - len(encoded[name][i])) for i in indices]
        tensor = torch.tensor(rows, dtype=torch.long)
        if device.type == "cuda":
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        tensors[name] = tensor
    return tensors


@torch.inference_mode()
def forward_all(runtime, encoded: dict, pad_token_id: int, token_budget: int, max_batch: int,
                pad_to_multiple_of: int) -> torch.Tensor:
    """Logits (float32, on the CPU) for every encoded text, in input order:
    `runtime.forward(padded inputs) -> logits` per micro-batch.

    Lengths are padded to a multiple of `pad_to_multiple_of`: every new (batch, length) shape
    makes oneDNN build and cache new kernels, and with exact lengths a worker's memory keeps
    growing under real traffic; with multiples of 32 it stays flat (docs/PERFORMANCE.md).
    """
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order, parts = [], []
    for indices in micro_batches(lengths, token_budget, max_batch, pad_to_multiple_of):
        inputs = pad_batch(encoded, indices, pad_token_id, runtime.device, pad_to_multiple_of,
                           getattr(runtime.config, "max_position_embeddings", None))
        parts.append(runtime.forward(**inputs).float())
        order += indices
    logits = torch.empty(len(lengths), runtime.config.num_labels, dtype=torch.float32)
    if parts:  # one device-to-host copy for the whole batch, then back to input order
        logits[torch.tensor(order)] = torch.cat(parts).cpu()
    return logits


def score(runtime, encoded: dict, pad_token_id: int, token_budget: int, max_batch: int,
          pad_to_multiple_of: int, calibrator: Calibrator = UNCALIBRATED) -> torch.Tensor:
    """Class probabilities (float32, on the CPU) for every encoded text, in input order: the
    logits of `forward_all` through the run's calibrator (handler/calibration.py)."""
    logits = forward_all(runtime, encoded, pad_token_id, token_budget, max_batch,
                         pad_to_multiple_of)
    return calibrator.apply(logits, [len(ids) for ids in encoded["input_ids"]])


def halving_on_out_of_memory(attempt, size: int, smallest: int, device, what: str):
    """`attempt(size)`; on out-of-memory again with half the size, down to `smallest` (then
    the error goes up). Prediction halves its micro-batches, explanation its token budget."""
    while True:
        try:
            return attempt(size)
        except torch.OutOfMemoryError:
            if size <= smallest:
                raise
        # out of the except block, so the failed attempt's tensors can be freed
        if device.type == "cuda":
            torch.cuda.empty_cache()
        size = max(smallest, size // 2)
        logger.warning("out of memory: retrying with %d %s", size, what)
