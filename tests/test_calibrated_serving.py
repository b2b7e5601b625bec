"""The fitted temperatures travel run -> archive -> handler: TorchServe answers the calibrated
probabilities `training.evaluate` computes, each text divided by the temperature of its length,
and `min_confidence` turns low-confidence answers
into "uncertain" (probabilities still given)."""
import json
import shutil

import pytest
import requests
import torch
import yaml

from harness.server import running
from tests.conftest import NEGATIVE, POSITIVE, REPO, long_reviews

pytestmark = pytest.mark.serve
# long texts 2.5, texts of at most 8 tokens ([CLS] + 6 words + [SEP]) 0.7
CALIBRATION = {"temperature": 2.5, "short_temperature": 0.7, "short_tokens": 8}


@pytest.fixture(scope="module")
def calibrated(tiny_run, tmp_path_factory):
    """(run dir with a calibration.json, texts, offline probabilities, min_confidence)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    from handler.calibration import TemperatureCalibrator, load_calibrator
    from handler.runtime import TorchRuntime
    from training.scoring import score_texts
    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    # calibration.json as the first format wrote it (no format_version, no kind): still served
    (run / "calibration.json").write_text(json.dumps(CALIBRATION))
    # plus texts from all negative to all positive words: a tiny model that saturates (CI's gave
    # every review the same confidence to 1e-4) still answers these with confidences apart
    mixed = [" ".join(POSITIVE[:k] + NEGATIVE[k:]) for k in range(len(POSITIVE) + 1)]
    texts = long_reviews(12, seed=11) + ["great wonderful", "awful boring", "the movie plot"] + mixed
    model = TorchRuntime(AutoModelForSequenceClassification.from_pretrained(run).eval())
    tokenizer = AutoTokenizer.from_pretrained(run)
    encoding = EncodingSettings.load(run)
    calibrator = load_calibrator(run)
    assert calibrator == TemperatureCalibrator(2.5, 0.7, 8)
    scores = score_texts(model, tokenizer, texts, encoding)
    offline, uncalibrated = scores.probabilities(calibrator), scores.probabilities()
    # each text by the temperature of its length, counted by the tokenizer itself
    lengths = [len(tokenizer(text, truncation=True, max_length=encoding.max_length)["input_ids"])
               for text in texts]
    assert scores.lengths.tolist() == lengths
    temperatures = torch.tensor([0.7 if n <= 8 else 2.5 for n in lengths])
    assert 0 < int((temperatures == 0.7).sum()) < len(texts)  # both kinds of text are here
    by_hand = (scores.logits.double() / temperatures[:, None].double()).softmax(-1)
    torch.testing.assert_close(offline.double(), by_hand, atol=1e-6, rtol=0)
    assert (offline - uncalibrated).abs().max() > 1e-3  # the temperatures change the answer
    # min_confidence in the widest gap between two confidences, with at least two texts on
    # either side: served answers differ from offline ones by 1e-5 at most (the test below),
    # so none can cross it, however close the tiny model's confidences came out
    confidences = sorted(offline.max(-1).values.tolist())
    low = max(range(1, len(confidences) - 2), key=lambda i: confidences[i + 1] - confidences[i])
    assert confidences[low + 1] - confidences[low] > 1e-4, confidences
    threshold = (confidences[low] + confidences[low + 1]) / 2
    return run, texts, offline.tolist(), threshold


@pytest.fixture(scope="module")
def server(calibrated, tmp_path_factory):
    from training.archive import main
    run, _, _, threshold = calibrated
    settings = yaml.safe_load((REPO / "handler" / "model-config.yaml").read_text())
    settings["handler"].update(cpu_precision="fp32", min_confidence=threshold)
    config = run / "model-config.yaml"
    config.write_text(yaml.safe_dump(settings))
    store = tmp_path_factory.mktemp("calibrated-store")
    main([str(run), "--model-store", str(store), "--config-file", str(config)])
    with running(tmp_path_factory.mktemp("ts-calibrated"), store) as ts:
        yield ts


def test_served_probabilities_are_the_calibrated_ones(server, calibrated):
    _, texts, offline, _ = calibrated
    response = requests.post(f"{server.inference}/predictions/bert_sentiment",
                             json={"texts": texts}, timeout=60)
    assert response.status_code == 200, response.text
    served = [answer["probabilities"]["positive"] for answer in response.json()]
    assert served == pytest.approx([p[1] for p in offline], abs=1e-5)


def test_min_confidence_makes_low_confidence_answers_uncertain(server, calibrated):
    _, texts, offline, threshold = calibrated
    answers = requests.post(f"{server.inference}/predictions/bert_sentiment",
                            json={"texts": texts}, timeout=60).json()
    labels = ["negative", "positive"]
    for answer, probabilities in zip(answers, offline):
        confident = max(probabilities) >= threshold
        expected = labels[probabilities.index(max(probabilities))] if confident else "uncertain"
        assert answer["label"] == expected
        assert answer["score"] == pytest.approx(max(probabilities), abs=1e-5)
        assert set(answer["probabilities"]) == set(labels)
    assert {answer["label"] for answer in answers} & {"uncertain"}
    assert {answer["label"] for answer in answers} - {"uncertain"}
