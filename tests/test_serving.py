"""Integration: the archived tiny model on a real TorchServe process (loopback, free ports)."""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness.http import JSON, assert_prediction, post
from harness.server import frontend_process, read_log, workers_once_settled
from tests.conftest import REPO, long_reviews, synthetic_reviews

pytestmark = pytest.mark.serve
CUSTOM_METRICS = ["TextsPerBatch", "RequestsPerBatch", "TokensPerBatch", "TruncatedTexts",
                  "PredictionsPerLabel", "HandlerInferenceTime"]


def test_plain_text_request(torchserve):
    assert_prediction(post(torchserve, "A wonderful, moving film."))


def test_body_without_content_type_is_one_review(torchserve):
    assert_prediction(post(torchserve, "great movie", headers={}))


def test_form_field_text_is_one_review(torchserve):
    response = requests.post(f"{torchserve.inference}/predictions/bert_sentiment",
                             data={"text": "great movie & superb actors"}, timeout=30)
    assert_prediction(response)


def test_bare_curl_form_body_gets_advice(torchserve):
    response = requests.post(f"{torchserve.inference}/predictions/bert_sentiment",
                             data="great movie", timeout=30,  # what curl -d 'great movie' sends
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert "Content-Type: text/plain" in response.json()["error"]


def test_json_text_request(torchserve):
    assert_prediction(post(torchserve, json.dumps({"text": "Boring plot and dull actors."}), JSON))


def test_json_texts_request_answers_in_order(torchserve):
    texts = ["great great wonderful", "awful boring terrible", "the movie was superb"]
    answers = assert_prediction(post(torchserve, json.dumps({"texts": texts}), JSON))
    assert isinstance(answers, list) and len(answers) == 3
    singles = [post(torchserve, text).json() for text in texts]
    assert [a["probabilities"]["positive"] for a in answers] == pytest.approx(
        [s["probabilities"]["positive"] for s in singles], abs=1e-5)


def test_served_probabilities_equal_training_evaluate_beyond_the_trained_length(torchserve,
                                                                               tiny_run):
    """The tiny model was trained at max_length 32 while model-config.yaml's default serving
    length is larger: TorchServe must serve exactly what `training.evaluate` scores (the run's
    encoding.json, carried in the archive), not the config's length."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.encoding import EncodingSettings
    from handler.calibration import load_calibrator
    from handler.runtime import TorchRuntime
    from training.scoring import score_texts
    texts = long_reviews(24, seed=5)
    model = TorchRuntime(AutoModelForSequenceClassification.from_pretrained(tiny_run).eval())
    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    encoding = EncodingSettings.load(tiny_run)
    assert encoding.max_length == 32
    assert all(len(tokenizer(text)["input_ids"]) > 40 for text in texts)
    served = post(torchserve, json.dumps({"texts": texts}), JSON).json()
    offline = score_texts(model, tokenizer, texts, encoding).probabilities(
        load_calibrator(tiny_run)).tolist()
    assert [a["probabilities"]["positive"] for a in served] == pytest.approx(
        [p[1] for p in offline], abs=1e-5)
    log = torchserve.log("model_log")
    assert "max_length=32" in log, "the handler does not log the encoding it serves with"


def test_logs_are_read_with_what_log4j2_rolled_away_at_midnight(tmp_path):
    """A server running past midnight has its start in logs/model_log.<day>.log.gz (CI failed a
    log check that way): the tests' log reader takes the rolled parts, oldest first, under the
    name the shipped log4j2.xml gives them."""
    import gzip
    import os
    import re
    shipped = (REPO / "serving" / "log4j2.xml").read_text()
    pattern = re.search(r'filePattern="\$\{logs\}/(model_log\.%d\{dd-MMM\}\.log\.gz)"', shipped)
    assert pattern, "serving/log4j2.xml no longer rolls model_log as read_log expects"
    for day, text, mtime in [("22-Nov", "second day\n", 2e9), ("21-Nov", "first day\n", 1e9)]:
        rolled = tmp_path / pattern.group(1).replace("%d{dd-MMM}", day)
        rolled.write_bytes(gzip.compress(text.encode()))
        os.utime(rolled, (mtime, mtime))
    (tmp_path / "model_log.log").write_text("after midnight\n")
    (tmp_path / "ts_log.log").write_text("another log\n")
    assert read_log(tmp_path, "model_log") == "first day\nsecond day\nafter midnight\n"
    assert read_log(tmp_path, "access_log") == ""


def test_config_may_lower_the_length_never_raise_it(tmp_path):
    from handler.encoding import EncodingSettings
    trained = EncodingSettings(max_length=128, normalize_breaks=True)
    trained.save(tmp_path)
    for positions, configured, expected in [(512, None, 128), (512, 256, 128), (512, 64, 64),
                                            (100, None, 100), (100, 120, 100)]:
        (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": positions}))
        served = EncodingSettings.serving(tmp_path, configured)
        assert served.max_length == expected, (positions, configured)
        assert served.normalize_breaks
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    assert EncodingSettings.serving(tmp_path) == trained


def test_concurrent_requests_are_batched(torchserve):
    texts = synthetic_reviews(48, seed=3)["text"].tolist()
    with ThreadPoolExecutor(max_workers=48) as pool:
        responses = list(pool.map(lambda text: post(torchserve, text), texts))
    assert [r.status_code for r in responses] == [200] * 48
    metrics = scrape(torchserve)
    count = metric_value(metrics, "RequestsPerBatch_count")
    total = metric_value(metrics, "RequestsPerBatch_sum")
    assert total > count, "no handler call ever got more than one request"


def scrape(server) -> str:
    response = requests.get(f"{server.metrics}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def metric_value(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + "{") or line.startswith(name + " ")]
    assert values, f"{name} not in /metrics"
    return sum(values)


def test_metrics_endpoint_has_torchserve_and_custom_metrics(torchserve):
    assert post(torchserve, "great " * 400).status_code == 200  # long enough to be truncated
    text = scrape(torchserve)
    assert "# TYPE ts_inference_requests_total counter" in text
    assert metric_value(text, "ts_inference_requests_total") >= 1
    assert metric_value(text, "ts_inference_latency_microseconds") > 0
    for name in CUSTOM_METRICS:
        assert name in text, f"custom metric {name} missing from /metrics"
    assert metric_value(text, "TruncatedTexts") >= 1
    assert 'Label="positive"' in text or 'Label="negative"' in text


def test_describe_and_scale_workers(torchserve):
    described = torchserve.describe()
    assert described["modelName"] == "bert_sentiment"
    assert described["batchSize"] == 16 and described["maxBatchDelay"] == 1
    assert len(described["workers"]) == 1
    url = f"{torchserve.management}/models/bert_sentiment"
    response = requests.put(f"{url}?min_worker=2&synchronous=true", timeout=180)
    assert response.status_code == 200, response.text
    workers = workers_once_settled(torchserve, 2, timeout=10)
    assert len(workers) == 2 and all(w["status"] == "READY" for w in workers), workers
    assert post(torchserve, "superb").status_code == 200
    # TorchServe 0.12 may answer a synchronous scale-down with a spurious 500 although it
    # scales down, so scale down asynchronously and watch describe
    response = requests.put(f"{url}?min_worker=1&max_worker=1", timeout=60)
    assert response.status_code in (200, 202), response.text
    workers = workers_once_settled(torchserve, 1, timeout=60)
    assert len(workers) == 1 and workers[0]["status"] == "READY", workers


def test_model_registration_over_the_api_is_disabled(torchserve):
    response = requests.post(f"{torchserve.management}/models",
                             params={"url": "http://127.0.0.1:9/evil.mar"}, timeout=10)
    assert response.status_code >= 400
    assert len(requests.get(f"{torchserve.management}/models", timeout=10).json()["models"]) == 1


BAD_REQUESTS = [
    ("empty body", b"", "text/plain", 400, "empty"),
    ("whitespace only", b"  \n\t ", "text/plain", 400, "empty"),
    ("invalid UTF-8", b"great \xff\xfe movie", "text/plain", 400, "UTF-8"),
    ("malformed JSON", b'{"text": "great', "application/json", 400, "not valid JSON"),
    ("text is a number", b'{"text": 5}', "application/json", 400, "must be a string"),
    ("top-level array", b"[]", "application/json", 400, "must be an object"),
    ("empty texts", b'{"texts": []}', "application/json", 400, "empty"),
    ("too many texts", json.dumps({"texts": ["great"] * 65}).encode(), "application/json", 413,
     "limit is 64"),
    ("text over the cap", b"great " * 5000, "text/plain", 413, "limit is 20000"),
    ("unsupported type", b"great", "application/xml", 415, "unsupported content type"),
]


@pytest.mark.parametrize("name, body, content_type, code, message", BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_gets_a_json_4xx(torchserve, name, body, content_type, code, message):
    response = post(torchserve, body, {"Content-Type": content_type})
    assert response.status_code == code, response.text
    error = response.json()
    assert error["code"] == code and message in error["error"]


def test_bad_requests_do_not_spoil_their_batch_or_restart_workers(torchserve):
    before = {(w["id"], w["startTime"]) for w in torchserve.describe()["workers"]}
    cases = [(body, content_type, code) for _, body, content_type, code, _ in BAD_REQUESTS]
    cases += [(b"A wonderful film.", "text/plain", 200)] * 10
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        responses = list(pool.map(
            lambda case: post(torchserve, case[0], {"Content-Type": case[1]}), cases))
    assert [r.status_code for r in responses] == [code for _, _, code in cases]
    for response in responses[-10:]:
        assert_prediction(response)
    after = {(w["id"], w["startTime"]) for w in torchserve.describe()["workers"]}
    assert after == before


def test_frontend_runs_with_the_shipped_jvm_arguments(torchserve):
    """serving/config.properties' vmargs reach the Java frontend: the heap bound (without it
    the JVM may take a quarter of the host's RAM) and the log4j2 file that cuts query strings."""
    shipped = next(line.partition("=")[2].split() for line in
                   (REPO / "serving" / "config.properties").read_text().splitlines()
                   if line.startswith("vmargs="))
    assert "-Xmx512m" in shipped
    command = frontend_process(torchserve.inference).cmdline()
    for arg in shipped:
        if arg.startswith("-Dlog4j.configurationFile="):
            assert f"-Dlog4j.configurationFile={REPO / 'serving' / 'log4j2.xml'}" in command
        else:
            assert arg in command
