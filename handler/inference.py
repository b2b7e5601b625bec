"""Batched forward passes over encoded reviews: sort by length, cut micro-batches under a token
budget, pad each to its own longest text, and return probabilities in the original order.
Shared by the TorchServe handler and `training.evaluate`, so both score texts identically.
"""
import torch


def micro_batches(lengths: list[int], token_budget: int, max_batch: int) -> list[list[int]]:
    """Indices grouped by length so that batch_size * longest_length <= token_budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        # lengths ascend, so the newest item is the longest of the candidate batch
        if current and ((len(current) + 1) * lengths[i] > token_budget or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


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
def predict_probabilities(model, encoded: dict, pad_token_id: int, token_budget: int = 16384,
                          max_batch: int = 64, autocast_dtype=None,
                          pad_to_multiple_of: int = 32) -> torch.Tensor:
    """Class probabilities (float32, on the CPU) for every encoded text, in input order.

    Lengths are padded to a multiple of `pad_to_multiple_of`: every new (batch, length) shape
    makes oneDNN build and cache new kernels, and with exact lengths a worker's memory kept
    growing for minutes under real traffic (1.2 GB after 10 minutes); with multiples of 32 it
    stays flat at no measurable speed cost (docs/PERFORMANCE.md).
    """
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order, parts = [], []
    for indices in micro_batches(lengths, token_budget, max_batch):
        inputs = pad_batch(encoded, indices, pad_token_id, device, pad_to_multiple_of, limit)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(**inputs).logits
        parts.append(logits.float().softmax(dim=-1))
        order += indices
    probabilities = torch.empty(len(lengths), model.config.num_labels, dtype=torch.float32)
    if parts:  # one device-to-host copy for the whole batch, then back to input order
        probabilities[torch.tensor(order)] = torch.cat(parts).cpu()
    return probabilities
