"""TorchServe handler: IMDB sentiment with a fine-tuned BERT-family encoder.

One call of `handle` gets every request TorchServe batched together (batchSize/maxBatchDelay in
model-config.yaml). All texts of all valid requests are encoded in one fast-tokenizer call with
the same `encode_reviews` used in training, scored in length-sorted micro-batches, and mapped back
to their requests. A bad request gets its own 4xx JSON error; the others in the batch still get
their 200. Review text never reaches the logs.
"""
import json
import logging
import os
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from handler.encoding import DEFAULT_MAX_LENGTH, encode_reviews
from handler.inference import predict_probabilities
from handler.parsing import Limits, RequestError, parse_request

logger = logging.getLogger(__name__)

REASONS = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type",
           500: "Internal Server Error"}


def physical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class SentimentHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        properties = context.system_properties
        settings = (context.model_yaml_config or {}).get("handler", {})
        model_dir = properties["model_dir"]
        self.model_name = context.manifest["model"]["modelName"]
        self.max_length = int(settings.get("max_length", DEFAULT_MAX_LENGTH))
        self.token_budget = int(settings.get("token_budget", 16384))
        self.micro_batch_size = int(settings.get("micro_batch_size", 64))
        self.pad_to_multiple_of = int(settings.get("pad_to_multiple_of", 32))
        self.limits = Limits(int(settings.get("max_texts_per_request", 64)),
                             int(settings.get("max_chars_per_text", 20_000)))

        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
            precision = settings.get("gpu_precision", "fp16")
        else:
            self.device = torch.device("cpu")
            precision = settings.get("cpu_precision", "fp32")
            # workers x threads <= cores: each worker gets cores // maxWorkers threads
            workers = max(1, int((context.model_yaml_config or {}).get("maxWorkers", 1)))
            threads = int(settings.get("threads_per_worker", 0)) or max(1, physical_cores() // workers)
            torch.set_num_threads(threads)
            logger.info("CPU worker: %d torch threads", threads)

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)  # local files only, never a hub
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        # never ask for more positions than the encoder has (a small model may have < 256)
        self.max_length = min(self.max_length, model.config.max_position_embeddings)
        self.model, self.autocast_dtype = self.prepare_model(model.eval(), precision)
        self.id2label = {int(i): label for i, label in model.config.id2label.items()}
        self.precision = precision
        logger.info("loaded %s on %s, precision %s, max_length %d", self.model_name,
                    self.device, precision, self.max_length)
        self.initialized = True

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

    def handle(self, data, context):
        self.context = context
        started = time.perf_counter()
        responses = [None] * len(data)
        valid = {}  # request index -> ParsedRequest
        for idx, request in enumerate(data):
            context.set_response_content_type(idx, "application/json")
            try:
                valid[idx] = parse_request(request, self.content_type(context, idx),
                                           self.limits)
            except RequestError as err:
                responses[idx] = self.error(context, idx, err.code, str(err))
            except Exception:  # a parsing bug must not fail the other requests of the batch
                logger.exception("could not parse request %s", context.get_request_id(idx))
                responses[idx] = self.error(context, idx, 400, "request could not be parsed")

        try:
            answers = self.answer(valid)
        except Exception:  # one odd text must not fail the batch: retry each request alone
            logger.exception("inference failed for a batch of %d requests", len(valid))
            answers = {}
            for idx in valid:
                try:
                    answers.update(self.answer({idx: valid[idx]}))
                except Exception:  # keep the worker alive; never log the texts
                    logger.exception("inference failed for request %s",
                                     context.get_request_id(idx))
                    responses[idx] = self.error(context, idx, 500, "inference failed")
        for idx, answer in answers.items():
            responses[idx] = answer

        self.metric("HandlerInferenceTime", MetricTypes.GAUGE,
                    (time.perf_counter() - started) * 1000)
        self.metric("RequestsPerBatch", MetricTypes.HISTOGRAM, len(data))
        return responses

    def answer(self, requests: dict) -> dict:
        """Score every text of the given requests in one pass; a JSON answer per request."""
        texts = [text for parsed in requests.values() for text in parsed.texts]
        if not texts:
            return {}
        results = iter(self.predict(texts))
        answers = {}
        for idx, parsed in requests.items():
            mine = [next(results) for _ in parsed.texts]
            answers[idx] = json.dumps(mine if parsed.batched else mine[0])
        return answers

    def predict(self, texts: list[str]) -> list[dict]:
        encoded = encode_reviews(self.tokenizer, texts, self.max_length)
        probabilities = predict_probabilities(
            self.model, encoded, self.tokenizer.pad_token_id, self.token_budget,
            self.micro_batch_size, self.autocast_dtype, self.pad_to_multiple_of)
        labels = [self.id2label[i] for i in range(probabilities.shape[1])]
        results = []
        for row in probabilities.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"label": labels[best], "score": round(row[best], 6),
                            "probabilities": {label: round(p, 6) for label, p in zip(labels, row)}})

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

    def metric(self, name: str, metric_type, value, *extra_dimensions: str) -> None:
        """Emit a metric declared under model_metrics in serving/metrics.yaml."""
        metrics = self.context.metrics if self.context is not None else None
        if metrics is None:
            return
        metrics.get_metric(name, metric_type).add_or_update(
            value, [self.model_name, "Model", *extra_dimensions])
