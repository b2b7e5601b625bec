"""Batched forward passes over encoded reviews: sort by length, cut micro-batches under a token
budget, pad each to its own longest text, and return probabilities in the original order.
Every runtime (handler/runtime.py) is scored through this one loop, by the handler,
`training.evaluate` and the benchmarks alike, so they all score texts identically.
"""
import logging

import torch

from handler.calibration import Calibration

logger = logging.getLogger(__name__)


# What one more forward pass costs beyond its padded tokens, in tokens: micro_batches splits a
# batch where the padding it saves is worth more. Measured in-process on 2 cores of an AMD EPYC
# with AVX2 only (OpenVINO f32, batches of 16): 16, 32 and 64 served alike, 256 as badly as one
# pass per batch (docs/PERFORMANCE.md).
PASS_COST_TOKENS = 32


def micro_batches(lengths: list[int], token_budget: int, max_batch: int,
                  multiple: int = 1) -> list[list[int]]:
    """Indices in groups of consecutive lengths (sorted) that cost the fewest padded tokens:
    each group pads to its longest text rounded up to `multiple`, and each costs
    PASS_COST_TOKENS more; a group has at most `max_batch` texts and rows x longest within
    `token_budget` (a single text always fits). Cut by dynamic programming: a batch of 16 short
    reviews padded to its longest computed 2.5 tokens per real token."""
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
def score(runtime, encoded: dict, pad_token_id: int, token_budget: int, max_batch: int,
          pad_to_multiple_of: int, calibration: Calibration = Calibration()) -> torch.Tensor:
    """Class probabilities (float32, on the CPU) for every encoded text, in input order:
    `runtime.forward(padded inputs) -> logits` per micro-batch, softmax of the logits divided
    by each text's temperature (handler/calibration.py: by its length in tokens).

    Lengths are padded to a multiple of `pad_to_multiple_of`: every new (batch, length) shape
    makes oneDNN build and cache new kernels, and with exact lengths a worker's memory kept
    growing for minutes under real traffic (1.2 GB after 10 minutes); with multiples of 32 it
    stays flat at no measurable speed cost (2 vCPUs of an AMD EPYC with AVX512-BF16,
    docs/EXPERIMENTS.md).
    """
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order, parts = [], []
    for indices in micro_batches(lengths, token_budget, max_batch, pad_to_multiple_of):
        inputs = pad_batch(encoded, indices, pad_token_id, runtime.device, pad_to_multiple_of,
                           getattr(runtime.config, "max_position_embeddings", None))
        temperatures = calibration.temperatures([lengths[i] for i in indices])
        logits = runtime.forward(**inputs).float()
        parts.append((logits / temperatures.to(logits.device)[:, None]).softmax(dim=-1))
        order += indices
    probabilities = torch.empty(len(lengths), runtime.config.num_labels, dtype=torch.float32)
    if parts:  # one device-to-host copy for the whole batch, then back to input order
        probabilities[torch.tensor(order)] = torch.cat(parts).cpu()
    return probabilities


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
