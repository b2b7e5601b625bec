"""TorchServe handler: IMDB sentiment with a fine-tuned BERT-family encoder.

One call of `handle` gets every request TorchServe batched together (batchSize/maxBatchDelay in
model-config.yaml). The texts of the valid requests are encoded with the same `encode_reviews`
(and the same settings, `encoding.json` in the archive) used in training, scored in
length-sorted micro-batches, and mapped back to their requests. A bad request gets its own 4xx
JSON error; the others in the batch still get their 200. Review text never reaches the logs.

The work of one call is bounded in time (`max_call_seconds`, default a quarter of
responseTimeout): requests that would not fit are answered 503 with Retry-After instead of
letting TorchServe kill the worker at the timeout and fail every request in it.
"""
import json
import logging
import os
import threading
import time

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from handler.cpus import auto_cpu_precision, usable_cpus
from handler.encoding import EncodingSettings, encode_reviews
from handler.inference import load_temperature, predict_probabilities
from handler.parsing import Limits, RequestError, parse_request

logger = logging.getLogger(__name__)

REASONS = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type",
           500: "Internal Server Error", 503: "Service Unavailable"}
# (name, type, unit, extra dimensions): registered in `initialize`, so the archive serves on a
# stock TorchServe too (serving/metrics.yaml declares the same for metrics_mode=prometheus)
METRICS = [
    ("TextsPerBatch", MetricTypes.HISTOGRAM, "Count", []),
    ("RequestsPerBatch", MetricTypes.HISTOGRAM, "Count", []),
    ("TokensPerBatch", MetricTypes.HISTOGRAM, "Count", []),
    ("TruncatedTexts", MetricTypes.COUNTER, "Count", []),
    ("PredictionsPerLabel", MetricTypes.COUNTER, "Count", ["Label"]),
    ("RejectedRequests", MetricTypes.COUNTER, "Count", ["Code"]),
    ("HandlerInferenceTime", MetricTypes.GAUGE, "ms", []),
]
EXIT_CODE_DEVICE_FAILED = 70
UNCERTAIN = "uncertain"  # the label below min_confidence


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError)


def is_fatal_device_error(error: BaseException) -> bool:
    """CUDA errors after which the device is unusable (device-side assert, illegal address):
    every later call on this worker would fail too, so the worker must be replaced."""
    if is_out_of_memory(error):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", ())
    message = str(error)
    return isinstance(error, accelerator_error) or "CUDA error" in message \
        or "device-side assert" in message


def estimated_tokens(text: str, max_length: int) -> int:
    """A cheap upper-bound guess of a text's tokens (WordPiece averages > 3 characters a token)."""
    return min(max_length, len(text) // 3 + 2)


class SentimentHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        properties = context.system_properties
        model_yaml = context.model_yaml_config or {}
        settings = model_yaml.get("handler", {})
        model_dir = properties["model_dir"]
        self.model_name = context.manifest["model"]["modelName"]
        self.token_budget = int(settings.get("token_budget", 16384))
        self.micro_batch_size = int(settings.get("micro_batch_size", 64))
        self.pad_to_multiple_of = int(settings.get("pad_to_multiple_of", 32))
        self.limits = Limits(int(settings.get("max_texts_per_request", 64)),
                             int(settings.get("max_chars_per_text", 20_000)))
        response_timeout = float(model_yaml.get("responseTimeout", 120))
        self.max_call_seconds = float(settings.get("max_call_seconds") or response_timeout / 4)
        # off by default: below it the answer's label is "uncertain" (probabilities still given)
        self.min_confidence = float(settings.get("min_confidence") or 0.0)
        # the archive's content hash (training/archive.py), in every answer
        self.model_version = str(context.manifest["model"].get("modelVersion", ""))
        # explanations (handler/explain.py): /explanations/NAME, n_steps forward+backward passes
        self.explain_steps = int(settings.get("explain_steps", 20))
        self.explain_token_budget = int(settings.get("explain_token_budget", 8192))
        # an explained text costs about this many predictions of it: the starting guess, then
        # measured on every call that explains (answer_within_budget; docs/PERFORMANCE.md)
        self.explain_cost = float(settings.get("explain_cost_factor")
                                  or 3 * (self.explain_steps + 1))
        self.explain_limits = Limits(int(settings.get("max_texts_per_explanation", 16)),
                                     self.limits.max_chars_per_text)
        self.explainer = None  # built on the first explanation
        self.register_metrics(context)

        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
            torch.cuda.set_device(self.device)
            precision = settings.get("gpu_precision", "fp16")
        else:
            self.device = torch.device("cpu")
            precision = settings.get("cpu_precision", "auto")
            # workers x threads <= usable CPUs (affinity and cgroup quota)
            workers = max(1, int(model_yaml.get("maxWorkers", 1)))
            threads = int(settings.get("threads_per_worker", 0)) or max(1, usable_cpus() // workers)
            torch.set_num_threads(threads)
            logger.info("CPU worker: %d torch threads (%d usable CPUs, maxWorkers %d)", threads,
                        usable_cpus(), workers)

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)  # local files only, never a hub
        config = AutoConfig.from_pretrained(model_dir)
        self.encoding = self.serving_encoding(EncodingSettings.load(model_dir),
                                              settings.get("max_length"),
                                              config.max_position_embeddings)
        self.temperature = load_temperature(model_dir)
        # torch | openvino (CPU only; the GPU path is torch), see handler/openvino_runtime.py
        self.runtime = settings.get("cpu_runtime", "torch") if self.device.type == "cpu" \
            else "torch"
        requested = precision
        if precision == "auto" or (self.runtime == "openvino" and precision == "int8"):
            # torch: bf16 only where the CPU has it in hardware; int8 is OpenVINO's own model
            precision = auto_cpu_precision()
        self.model_dir, self.torch_precision, self.explain_model = model_dir, precision, None
        if self.runtime == "openvino":
            from handler.openvino_runtime import OpenVINOModel
            self.model = OpenVINOModel.load(
                model_dir, config, torch.get_num_threads(), requested,
                settings.get("openvino_cache_dir") or os.path.join(model_dir, "openvino_cache"),
                tokenizer=self.tokenizer)
            self.autocast_dtype, precision = None, f"openvino {self.model.precision}"
        elif self.runtime == "torch":
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, config=config)
            self.model, self.autocast_dtype = self.prepare_model(model.eval(), precision)
        else:
            raise ValueError(f"cpu_runtime {self.runtime!r}: choose torch or openvino")
        self.id2label = {int(i): label for i, label in config.id2label.items()}
        self.label2id = {label: i for i, label in self.id2label.items()}
        self.precision = precision
        self.seconds_per_token = self.warm_up()
        logger.info("loaded %s on %s, precision %s, %s, temperature %.4f; %.1f us per token, "
                    "at most %.1f s of work per call", self.model_name, self.device, precision,
                    self.encoding, self.temperature, self.seconds_per_token * 1e6,
                    self.max_call_seconds)
        self.initialized = True

    @staticmethod
    def serving_encoding(trained: EncodingSettings, configured, positions: int) -> EncodingSettings:
        """The run's own encoding settings; model-config.yaml's max_length may lower the length
        (say so in the log), never raise it; never more than the encoder's positions."""
        if configured is not None and int(configured) > trained.max_length:
            logger.warning("model-config max_length %s is above the %d tokens the model was "
                           "trained with: serving at %d", configured, trained.max_length,
                           trained.max_length)
        elif configured is not None and int(configured) < trained.max_length:
            logger.info("model-config max_length %s lowers the trained %d tokens", configured,
                        trained.max_length)
        return trained.capped(configured).capped(positions)

    def prepare_model(self, model, precision: str):
        """Weights on the device and the autocast dtype for the requested precision."""
        model = model.to(self.device)
        if precision == "fp32":
            return model, None
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            if self.device.type == "cuda":
                # half weights once on the GPU: half the memory, no per-forward weight casts;
                # autocast still keeps layer norm and softmax in fp32
                model = model.to(dtype=dtype)
            return model, dtype
        if precision == "int8" and self.device.type == "cpu":
            from torch.ao.quantization import quantize_dynamic
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8), None
        raise ValueError(f"unsupported precision {precision!r} on {self.device.type}")

    def torch_model(self):
        """(torch model, autocast dtype) for what needs autograd (explanations): the serving
        model itself with cpu_runtime torch; with openvino, the HF weights loaded on first use
        only, so a worker that never explains never holds them."""
        if self.runtime == "torch":
            return self.model, self.autocast_dtype
        if self.explain_model is None:
            model = AutoModelForSequenceClassification.from_pretrained(self.model_dir).eval()
            self.explain_model = self.prepare_model(model, self.torch_precision)
            logger.info("loaded the torch model for explanations (runtime %s)", self.runtime)
        return self.explain_model

    def warm_up(self) -> float:
        """One full-length forward pass before the first request (kernels built, weights
        touched); its time per token seeds the per-call work estimate."""
        texts = [" ".join(["movie"] * self.encoding.max_length)] * 2
        self.probabilities(texts)  # the first pass builds kernels: time the second
        started = time.perf_counter()
        self.probabilities(texts)
        return (time.perf_counter() - started) / (2 * self.encoding.max_length)

    def handle(self, data, context):
        self.context = context
        started = time.perf_counter()
        responses = [None] * len(data)
        valid = {}  # request index -> ParsedRequest
        for idx, request in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            try:
                valid[idx] = parse_request(request, self.content_type(context, idx),
                                           self.explain_limits if self.is_explanation(idx)
                                           else self.limits)
            except RequestError as err:
                responses[idx] = self.error(context, idx, err.code, str(err))
            except Exception:  # a parsing bug must not fail the other requests of the batch
                logger.exception("could not parse request %s", context.get_request_id(idx))
                responses[idx] = self.error(context, idx, 400, "request could not be parsed")

        for idx, answer in self.answer_within_budget(valid, started).items():
            responses[idx] = answer
        self.metric("HandlerInferenceTime", MetricTypes.GAUGE,
                    (time.perf_counter() - started) * 1000)
        self.metric("RequestsPerBatch", MetricTypes.HISTOGRAM, len(data))
        return responses

    def answer_within_budget(self, valid: dict, started: float) -> dict:
        """Answer requests in chunks of about one micro-batch of texts, in arrival order
        (predictions before explanations, so a cheap request never waits behind an expensive
        one), while the next chunk is expected to end within `max_call_seconds`; the rest get a
        503. An explanation weighs `explain_cost` predictions of its text."""
        answers, pending = {}, sorted(valid.items(), key=lambda item: self.is_explanation(item[0]))
        deadline = started + self.max_call_seconds
        while pending:
            chunk, texts, tokens = {}, 0, 0
            # explanations weigh explain_cost predictions: a chunk is never more work than a
            # full micro-batch of predictions
            most = max(self.token_budget, self.micro_batch_size * self.encoding.max_length)
            while pending and (not chunk or (
                    texts + len(pending[0][1].texts) <= self.micro_batch_size
                    and tokens + self.work(*pending[0]) <= most)):
                idx, parsed = pending.pop(0)
                chunk[idx] = parsed
                texts += len(parsed.texts)
                tokens += self.work(idx, parsed)
            if answers and time.perf_counter() + tokens * self.seconds_per_token > deadline:
                for idx in [*chunk, *(idx for idx, _ in pending)]:
                    self.context.set_response_header(idx, "Retry-After", "1")
                    answers[idx] = self.error(self.context, idx, 503, "server busy: this batch "
                                              "is full; retry the request")
                break
            chunk_started = time.perf_counter()
            answers.update(self.answer_isolated(chunk))
            elapsed = time.perf_counter() - chunk_started
            explained = sum(self.work(i, p) for i, p in chunk.items() if self.is_explanation(i))
            if explained:  # the explanations' share calibrates their cost factor
                plain_seconds = (tokens - explained) * self.seconds_per_token
                factor = max(elapsed - plain_seconds, 0.0) * self.explain_cost / (
                    explained * self.seconds_per_token)
                self.explain_cost = 0.5 * self.explain_cost + 0.5 * max(factor, 1.0)
            else:
                measured = elapsed / max(tokens, 1)
                self.seconds_per_token = 0.5 * self.seconds_per_token + 0.5 * measured
        return answers

    def is_explanation(self, idx: int) -> bool:
        """TorchServe marks requests to /explanations/NAME with the header explain: True."""
        return self.context.get_request_header(idx, "explain") == "True"

    def work(self, idx: int, parsed) -> float:
        """A request's estimated work, in predicted tokens."""
        tokens = sum(estimated_tokens(text, self.encoding.max_length) for text in parsed.texts)
        return tokens * (self.explain_cost if self.is_explanation(idx) else 1)

    def answer_isolated(self, requests: dict) -> dict:
        """`answer`, and if it fails, each request alone, so one odd text fails only its own
        request. A device error that leaves the GPU unusable ends the worker (TorchServe starts
        a new one) after this call's answers are sent."""
        try:
            return self.answer(requests)
        except Exception as err:  # noqa: BLE001 - never log the texts
            failure = err
        if is_fatal_device_error(failure):  # before any further CUDA call, which would fail too
            return self.device_failed(requests, failure)
        # out of the except block: the failed batch's tensors are released before retrying
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.error("inference failed for a batch of %d requests (%s); retrying each alone",
                     len(requests), type(failure).__name__)
        answers = {}
        for idx, parsed in requests.items():
            try:
                answers.update(self.answer({idx: parsed}))
            except Exception as err:  # noqa: BLE001 - keep the worker alive
                if is_fatal_device_error(err):
                    return {**answers, **self.device_failed(
                        {i: p for i, p in requests.items() if i not in answers}, err)}
                logger.error("inference failed for request %s: %s",
                             self.context.get_request_id(idx), type(err).__name__)
                answers[idx] = self.error(self.context, idx, 500, "inference failed")
        return answers

    def device_failed(self, requests: dict, error: BaseException) -> dict:
        logger.critical("device %s failed (%s): this worker exits so that TorchServe replaces "
                        "it", self.device, type(error).__name__)
        threading.Timer(1.0, os._exit, [EXIT_CODE_DEVICE_FAILED]).start()
        answers = {}
        for idx in requests:
            self.context.set_response_header(idx, "Retry-After", "5")
            answers[idx] = self.error(self.context, idx, 503, "the model's device failed; "
                                      "the worker restarts, retry the request")
        return answers

    def answer(self, requests: dict) -> dict:
        """Score every text of the given requests in one pass; a JSON answer per request."""
        texts = [text for parsed in requests.values() for text in parsed.texts]
        if not texts:
            return {}
        results = self.predict(texts)
        explained = [self.is_explanation(idx) for idx, parsed in requests.items()
                     for _ in parsed.texts]
        if any(explained):
            self.add_attributions([text for text, e in zip(texts, explained) if e],
                                  [result for result, e in zip(results, explained) if e])
        results = iter(results)
        answers = {}
        for idx, parsed in requests.items():
            mine = [next(results) for _ in parsed.texts]
            answers[idx] = json.dumps(mine if parsed.batched else mine[0])
        return answers

    def probabilities(self, texts: list[str]) -> tuple[torch.Tensor, dict]:
        """Encode and score, halving the micro-batches on out-of-memory (down to one text)."""
        encoded = encode_reviews(self.tokenizer, texts, self.encoding)
        token_budget, micro_batch = self.token_budget, self.micro_batch_size
        while True:
            try:
                return predict_probabilities(
                    self.model, encoded, self.tokenizer.pad_token_id, token_budget, micro_batch,
                    self.autocast_dtype, self.pad_to_multiple_of, self.temperature), encoded
            except torch.OutOfMemoryError:
                if micro_batch == 1:
                    raise
            # out of the except block, so the failed attempt's tensors can be freed
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            token_budget, micro_batch = max(1, token_budget // 2), max(1, micro_batch // 2)
            logger.warning("out of memory: retrying with micro-batches of at most %d texts, "
                           "%d tokens", micro_batch, token_budget)

    def add_attributions(self, texts: list[str], results: list[dict]) -> None:
        """Add to each result the word attributions for its predicted label (handler/explain.py);
        on out-of-memory retry with half the token budget, down to one text of max length."""
        from handler.explain import Explainer, word_attributions  # captum: only when explaining
        if self.explainer is None:
            # IG runs in fp32: with bf16 autocast attributions missed the logit difference by up
            # to 10 % (handler/explain.py); half (GPU) or int8 weights get an fp32 copy
            if self.device.type == "cuda" or self.torch_precision == "int8":
                model = AutoModelForSequenceClassification.from_pretrained(self.model_dir)
                model = model.eval().to(self.device)
            else:  # fp32 weights (bf16 is only autocast): the serving model itself
                model = self.torch_model()[0]
            self.explainer = Explainer(model, self.tokenizer.pad_token_id, self.explain_steps,
                                       self.explain_token_budget, None, self.pad_to_multiple_of)
        encoded = encode_reviews(self.tokenizer, texts, self.encoding, return_offsets=True)
        # the most probable class (also where min_confidence made the label "uncertain")
        targets = [self.label2id[max(r["probabilities"], key=r["probabilities"].get)]
                   for r in results]
        token_budget = self.explain_token_budget
        while True:
            try:
                scores = self.explainer.token_attributions(encoded, targets, token_budget)
                break
            except torch.OutOfMemoryError:
                if token_budget <= self.encoding.max_length:
                    raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            token_budget = max(self.encoding.max_length, token_budget // 2)
            logger.warning("out of memory explaining: retrying with %d tokens per pass",
                           token_budget)
        for i, result in enumerate(results):
            result["attributions"] = word_attributions(texts[i], encoded["offsets"][i],
                                                       encoded["word_ids"][i], scores[i])

    def predict(self, texts: list[str]) -> list[dict]:
        probabilities, encoded = self.probabilities(texts)
        labels = [self.id2label[i] for i in range(probabilities.shape[1])]
        results = []
        for row, truncated in zip(probabilities.tolist(), encoded["truncated"]):
            best = max(range(len(row)), key=row.__getitem__)
            label = labels[best] if row[best] >= self.min_confidence else UNCERTAIN
            results.append({"label": label, "score": round(row[best], 6),
                            "probabilities": {label: round(p, 6) for label, p in zip(labels, row)},
                            "truncated": bool(truncated), "model_version": self.model_version})

        self.metric("TextsPerBatch", MetricTypes.HISTOGRAM, len(texts))
        self.metric("TokensPerBatch", MetricTypes.HISTOGRAM,
                    sum(len(ids) for ids in encoded["input_ids"]))
        self.metric("TruncatedTexts", MetricTypes.COUNTER, sum(encoded["truncated"]))
        for label in labels:
            count = sum(result["label"] == label for result in results)
            if count:
                self.metric("PredictionsPerLabel", MetricTypes.COUNTER, count, label)
        return results

    def error(self, context, idx: int, code: int, message: str) -> str:
        context.set_response_status(code, REASONS.get(code, "Error"), idx)
        self.metric("RejectedRequests", MetricTypes.COUNTER, 1, str(code))
        logger.info("request %s rejected with %d: %s", context.get_request_id(idx), code,
                    message[:200])
        return json.dumps({"error": message, "code": code})

    @staticmethod
    def content_type(context, idx: int) -> str:
        headers = context.get_all_request_header(idx) or {}
        for name, value in headers.items():
            if name.lower() == "content-type" and isinstance(value, str):
                return value
        body = headers.get("body")  # the parameter-level header TorchServe attaches to the body
        return body.get("content-type", "") if isinstance(body, dict) else ""

    def register_metrics(self, context) -> None:
        """Make every metric the handler emits known to the server's metric cache, whatever
        metrics file the server was started with."""
        if context.metrics is None:
            return
        for name, metric_type, unit, extra in METRICS:
            try:
                context.metrics.get_metric(name, metric_type)
            except Exception:  # not declared in the server's metrics YAML: add it
                context.metrics.add_metric_to_cache(name, unit, ["ModelName", "Level", *extra],
                                                    metric_type)

    def metric(self, name: str, metric_type, value, *extra_dimensions: str) -> None:
        """Emit a custom metric; telemetry failing never fails an inference."""
        metrics = self.context.metrics if self.context is not None else None
        if metrics is None:
            return
        try:
            metrics.get_metric(name, metric_type).add_or_update(
                value, [self.model_name, "Model", *extra_dimensions])
        except Exception as err:  # noqa: BLE001
            logger.warning("metric %s not emitted: %s", name, err)
