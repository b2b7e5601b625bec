"""Seed-style baseline: what a first version of this service would look like. A minimal Flask
app that runs the Hugging Face model once per request (batch 1, fp32, plain head truncation),
served by Flask's threaded development server on loopback.

    python -m benchmarks.seed_baseline --model runs/quick --port 5000

POST /predict with a text/plain body (or JSON {"text": ...}) -> {"label", "score"}; GET /ping.
"""
import argparse
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.server import Server, free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def create_app(model_dir: str, max_length: int = 256):
    import torch
    from flask import Flask, jsonify, request
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    max_length = min(max_length, model.config.max_position_embeddings)
    labels = model.config.id2label
    app = Flask(__name__)

    @app.get("/ping")
    def ping():
        return jsonify(status="Healthy")

    @app.post("/predict")
    def predict():
        if request.is_json:
            text = (request.get_json(silent=True) or {}).get("text")
        else:
            text = request.get_data(as_text=True)
        if not isinstance(text, str) or not text.strip():
            return jsonify(error="empty review", code=400), 400
        inputs = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            probabilities = model(**inputs).logits.softmax(dim=-1)[0].tolist()
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        return jsonify(label=labels[best], score=probabilities[best])

    return app


class SeedBaseline(Server):
    """This baseline (Flask, threaded) in its own process on a free loopback port."""

    def __init__(self, workdir: Path, model_dir: Path, max_length: int = 256):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/predict"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.seed_baseline", "--model", str(model_dir),
             "--host", "127.0.0.1", "--port", str(self.port), "--max-length", str(max_length)],
            cwd=Path(__file__).resolve().parent.parent, env=env,
            stdout=open(self.workdir / self.log_name, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def cold_start(self, timeout: float = 180) -> float:
        return self.wait_for_prediction(timeout, started=self.started)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed_baseline",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory (HF format)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit("error: the baseline only listens on a loopback address")
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request access log
    create_app(args.model, args.max_length).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
