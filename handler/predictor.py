"""The model as the service uses it: review texts in, calibrated answers out, with explanations
on demand. Everything here runs without TorchServe (the benchmarks build one directly).

Texts are encoded with the run's own settings (`encode_reviews`, encoding.json), scored by the
runtime of handler/runtime.py in length-sorted micro-batches, turned into probabilities by the
run's calibrator (calibration.json) and answered with the labels of the model's config.json.
"""
import logging
import os
import time

import torch

from handler.calibration import load_calibrator
from handler.encoding import EncodingSettings, encode_reviews
from handler.inference import halving_on_out_of_memory, score
from handler.runtime import fp32_torch_model, load_runtime
from handler.settings import HandlerSettings
from handler.tokenizer import RunTokenizer

logger = logging.getLogger(__name__)

UNCERTAIN = "uncertain"  # the label below min_confidence


class Predictor:
    def __init__(self, model_dir, device="cpu", settings: HandlerSettings = HandlerSettings(),
                 model_version: str = ""):
        self.model_dir, self.device = str(model_dir), torch.device(device)
        self.settings, self.model_version = settings, model_version
        self.tokenizer = RunTokenizer(model_dir)  # the run's tokenizer.json, no transformers
        self.encoding = EncodingSettings.serving(model_dir, settings.max_length)
        self.calibrator = load_calibrator(model_dir)
        on_cpu = self.device.type == "cpu"
        self.runtime = load_runtime(
            model_dir, self.device, settings.cpu_precision if on_cpu else settings.gpu_precision,
            settings.cpu_runtime if on_cpu else "torch", torch.get_num_threads(),
            settings.openvino_cache_dir or os.path.join(model_dir, "openvino_cache"))
        config = self.runtime.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.explainer = None  # built on the first explanation

    def probabilities(self, texts: list[str]) -> tuple[torch.Tensor, dict]:
        """(probabilities, encoded texts); on out-of-memory the micro-batches are halved, down
        to one text."""
        encoded = encode_reviews(self.tokenizer, texts, self.encoding)
        most = self.settings.micro_batch_size

        def attempt(micro_batch: int) -> torch.Tensor:
            token_budget = max(1, self.settings.token_budget * micro_batch // most)
            return score(self.runtime, encoded, self.tokenizer.pad_token_id, token_budget,
                         micro_batch, self.settings.pad_to_multiple_of, self.calibrator)

        return halving_on_out_of_memory(attempt, most, 1, self.device,
                                        "texts per micro-batch at most"), encoded

    def predict(self, texts: list[str]) -> tuple[list[dict], int]:
        """(an answer per text, the tokens encoded)."""
        probabilities, encoded = self.probabilities(texts)
        results = []
        for row, truncated in zip(probabilities.tolist(), encoded["truncated"]):
            best = max(range(len(row)), key=row.__getitem__)
            label = self.labels[best] if row[best] >= self.settings.min_confidence else UNCERTAIN
            results.append({"label": label, "score": round(row[best], 6),
                            "probabilities": {name: round(p, 6)
                                              for name, p in zip(self.labels, row)},
                            "truncated": bool(truncated), "model_version": self.model_version})
        return results, sum(len(ids) for ids in encoded["input_ids"])

    def explain(self, texts: list[str], results: list[dict]) -> None:
        """Add to each result the word attributions for its most probable class (also where
        min_confidence made the label "uncertain"); on out-of-memory the token budget per pass
        is halved, down to one text of max length (handler/explain.py)."""
        from handler.explain import Explainer, word_attributions  # captum: only when explaining
        if self.explainer is None:
            # IG runs in fp32: with bf16 autocast the attributions miss the logit difference
            # (handler/explain.py)
            self.explainer = Explainer(fp32_torch_model(self.runtime, self.model_dir),
                                       self.tokenizer.pad_token_id, self.settings.explain_steps,
                                       self.settings.explain_token_budget, None,
                                       self.settings.pad_to_multiple_of)
            logger.info("explainer ready (runtime %s)", self.runtime.precision)
        encoded = encode_reviews(self.tokenizer, texts, self.encoding, return_offsets=True)
        targets = [self.labels.index(max(r["probabilities"], key=r["probabilities"].get))
                   for r in results]
        scores = halving_on_out_of_memory(
            lambda budget: self.explainer.token_attributions(encoded, targets, budget),
            self.settings.explain_token_budget, self.encoding.max_length, self.device,
            "tokens per explanation pass")
        for i, result in enumerate(results):
            result["attributions"] = word_attributions(texts[i], encoded["offsets"][i],
                                                       encoded["word_ids"][i], scores[i])

    def warm_up(self) -> float:
        """Two full-length forward passes before the first request (kernels built, weights
        touched); the second's time per token seeds the per-call work estimate."""
        texts = [" ".join(["movie"] * self.encoding.max_length)] * 2
        self.probabilities(texts)
        started = time.perf_counter()
        self.probabilities(texts)
        return (time.perf_counter() - started) / (2 * self.encoding.max_length)
