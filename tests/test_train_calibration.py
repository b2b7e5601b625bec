"""Training with excerpt augmentation and fitted temperatures, end to end on the tiny BERT:
the run carries calibration.json, metrics.json reports calibration and the short reviews, and
training.evaluate serves the same calibrated probabilities, also for a .jsonl file."""
import json

import pandas as pd
import pytest

from tests.conftest import REPO, synthetic_reviews, train_tiny

SHORT_REVIEWS = REPO / "data" / "short_reviews.jsonl"


@pytest.fixture(scope="module")
def story_dir(tmp_path_factory):
    """160 reviews of three synthetic sentences of one sentiment, joined by <br /> breaks."""
    sentences = synthetic_reviews(480, seed=3)
    by_label = {label: sentences[sentences.label == label].text.tolist() for label in (0, 1)}
    rows = [{"text": "<br /><br />".join(by_label[i % 2][3 * (i // 2):3 * (i // 2) + 3]),
             "label": i % 2} for i in range(160)]
    path = tmp_path_factory.mktemp("stories")
    pd.DataFrame(rows).to_parquet(path / "train.parquet")
    return path


@pytest.fixture(scope="module")
def calibrated_run(tiny_base_model, story_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "calibrated"
    metrics = train_tiny(tiny_base_model, story_dir, output, "--augment", "last,window",
                         "--excerpts-per-review", "1", "--calibration-size", "24")
    return output, metrics


def test_training_mixes_in_excerpts(calibrated_run):
    _, metrics = calibrated_run
    recipe = metrics["augmentation"]
    assert recipe["kinds"] == ["last", "window"] and recipe["excerpts_per_review"] == 1.0
    # 160 reviews - 24 validation - 24 calibration, one excerpt each (3 sentences: always room)
    assert metrics["split_sizes"]["train"] == recipe["reviews"] == 112
    assert recipe["excerpts"] == 112


def test_the_temperature_is_fitted_on_held_out_reviews(calibrated_run):
    run, metrics = calibrated_run
    stored = json.loads((run / "calibration.json").read_text())
    assert stored["temperature"] > 0 and stored["temperature"] != 1.0
    assert stored["samples"] == 24  # 24 held-out reviews, no excerpts by default
    assert "24" in stored["fitted_on"] and "excerpts" not in stored["fitted_on"]
    # every story is under 64 tokens: no long texts to fit a second temperature on
    assert stored["short_temperature"] is None and "one temperature" in stored["fitted_on"]
    calibration = metrics["calibration"]
    assert calibration["temperature"] == stored["temperature"]
    for name, samples in [("validation", 24), ("short_reviews", 240)]:
        report = calibration[name]
        assert report["samples"] == samples
        assert report["before"]["accuracy"] == report["after"]["accuracy"]
        assert {"ece", "nll", "brier"} <= set(report["before"]) == set(report["after"])
        # what a calibrated model would show at this size; 0 where the tiny model is sure of
        # every answer, as it may be on its own stories (the floor's maths: test_calibration.py)
        floor = report["ece_if_calibrated"]
        assert 0 <= floor["median"] <= floor["p95"] < 0.5 and floor["draws"] == 2000
    assert (run / "reliability.png").stat().st_size > 10_000


def test_short_reviews_are_reported_per_kind(calibrated_run):
    _, metrics = calibrated_run
    short = metrics["short_reviews"]
    assert short["source"] == "data/short_reviews.jsonl" and short["samples"] == 240
    assert set(short["by_kind"]) == {"plain", "mixed", "negation", "sarcasm"}
    assert sum(row["samples"] for row in short["by_kind"].values()) == 240
    assert short["accuracy"] == metrics["calibration"]["short_reviews"]["before"]["accuracy"]


def test_evaluate_applies_the_runs_temperature(calibrated_run):
    from training.evaluate import main
    run, metrics = calibrated_run
    scored = main(["--model", str(run), "--split", "validation"])
    assert scored["calibration"]["temperature"] == metrics["calibration"]["temperature"]
    assert scored["calibration"]["kind"] == metrics["calibration"]["kind"] == "temperature"
    assert scored["accuracy"] == metrics["accuracy"]
    after = metrics["calibration"]["validation"]["after"]
    assert scored["eval_loss"] == pytest.approx(after["nll"], abs=1e-3)
    assert scored["calibration"]["ece"] == pytest.approx(after["ece"], abs=1e-3)
    floor = scored["calibration"]["ece_if_calibrated"]  # 0 for a model sure of every answer
    assert 0 <= floor["median"] <= floor["p95"] < 0.5 and floor["draws"] == 2000


def test_evaluate_scores_a_jsonl_file_whole_with_accuracy_per_kind(calibrated_run):
    from training.evaluate import main
    run, metrics = calibrated_run
    scored = main(["--model", str(run), "--data", str(SHORT_REVIEWS)])
    assert scored["samples"] == 240 and scored["split"] == "short_reviews"
    assert (run / "eval-short_reviews.json").is_file()
    by_kind = scored["accuracy_by_kind"]
    assert {kind: row["samples"] for kind, row in by_kind.items()} == {
        "plain": 60, "mixed": 60, "negation": 60, "sarcasm": 60}
    trained = metrics["short_reviews"]["by_kind"]
    for kind, row in by_kind.items():  # the Trainer's batches pad differently: near ties may flip
        assert row["accuracy"] == pytest.approx(trained[kind]["accuracy"], abs=0.05)
    assert scored["eval_loss"] == pytest.approx(
        metrics["calibration"]["short_reviews"]["after"]["nll"], abs=1e-3)


def test_evaluate_scores_a_parquet_file(calibrated_run, tmp_path):
    from training.evaluate import main
    run, _ = calibrated_run
    path = tmp_path / "few.parquet"
    pd.DataFrame({"text": ["loved it, wonderful", "awful and boring"], "label": [1, 0]}).to_parquet(path)
    scored = main(["--model", str(run), "--data", str(path)])
    assert scored["samples"] == 2 and "accuracy_by_kind" not in scored


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ('{"text": "fine", "label": 1}\n{"text": "bad"', "could not read"),
    ('{"review": "fine", "label": 1}\n', "lacks column"),
    ('{"text": "fine", "label": 3}\n', "labels"),
])
def test_evaluate_refuses_bad_files(calibrated_run, tmp_path, content, message):
    from training.evaluate import main
    run, _ = calibrated_run
    path = tmp_path / "reviews.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        main(["--model", str(run), "--data", str(path)])


def test_no_calibration_means_no_temperature(tiny_base_model, story_dir, tmp_path):
    output = tmp_path / "uncalibrated"
    output.mkdir()
    (output / "calibration.json").write_text('{"temperature": 3.0}')  # stale from an older run
    metrics = train_tiny(tiny_base_model, story_dir, output, "--calibration-size", "0",
                         "--epochs", "1", "--augment", "none")
    assert not (output / "calibration.json").exists()
    assert metrics["calibration"]["temperature"] == 1.0
    assert metrics["augmentation"]["excerpts"] == 0 and metrics["split_sizes"]["train"] == 136


def test_the_calibration_excerpts_are_chosen_by_flag(tiny_base_model, story_dir, tmp_path):
    metrics = train_tiny(tiny_base_model, story_dir, tmp_path / "reviews-only", "--epochs", "1",
                         "--augment", "none", "--calibration-size", "24",
                         "--calibration-excerpts", "none")
    stored = json.loads((tmp_path / "reviews-only" / "calibration.json").read_text())
    assert stored["samples"] == 24 and "excerpts" not in stored["fitted_on"]
    metrics = train_tiny(tiny_base_model, story_dir, tmp_path / "last", "--epochs", "1",
                         "--augment", "none", "--calibration-size", "24",
                         "--calibration-excerpts", "last")
    assert metrics["calibration"]["samples"] == 48
    assert "24 excerpts of them (last sentences)" in metrics["calibration"]["fitted_on"]


@pytest.mark.parametrize("flags,message", [
    (["--calibration-excerpts", "middle"], "--calibration-excerpts"),
    (["--augment", "last,middle"], "augmentation"),
    (["--excerpts-per-review", "-1"], "excerpts-per-review"),
    (["--calibration-size", "-5"], "calibration-size"),
    (["--attention-dropout", "1"], "attention-dropout"),
    (["--attention-dropout", "-0.1"], "attention-dropout"),
])
def test_bad_training_flags_are_refused(flags, message, capsys):
    from training.config import parse_args
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert message in capsys.readouterr().err


def test_excerpts_are_cut_from_reviews_left_out_never_calibration_ones(tiny_base_model, story_dir,
                                                                         tmp_path, capsys):
    from training.data import load_reviews, take
    from training.splits import carve_calibration, excerpt_sources
    splits, _ = load_reviews(str(story_dir), 24, 42)
    pool = splits["train"]  # 136 reviews
    calibration, train_set, spare, _ = carve_calibration(pool, take(pool, 60, 42), 24, 42)
    assert (len(calibration), len(train_set), len(spare)) == (24, 60, 52)
    texts = [set(part["text"]) for part in (calibration, train_set, spare)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert excerpt_sources(train_set, spare, None) is train_set
    sources = excerpt_sources(train_set, spare, 100)
    assert sources["text"][:60] == train_set["text"] and set(sources["text"][60:]) <= texts[2]
    # a count outside [training reviews, all there are] is held inside it, with a note
    assert excerpt_sources(train_set, spare, 59) is train_set
    everything = excerpt_sources(train_set, spare, 113)
    assert len(everything) == 112 and set(everything["text"][60:]) == texts[2]
    notes = capsys.readouterr().out
    assert "cut from 60 reviews" in notes and "cut from 112 reviews" in notes
    metrics = train_tiny(tiny_base_model, story_dir, tmp_path / "wide", "--epochs", "1",
                         "--max-train-samples", "60", "--calibration-size", "24",
                         "--excerpts-per-review", "1", "--excerpt-reviews", "100")
    recipe = metrics["augmentation"]
    assert (recipe["reviews"], recipe["excerpts"], recipe["cut_from_reviews"]) == (60, 60, 100)


def test_an_isotonic_calibrator_is_fitted_saved_and_served(tiny_base_model, story_dir, tmp_path):
    """--calibrator isotonic: fitted on the held-out reviews, saved with its kind, and what
    training reports is what `training.evaluate` and the handler's Predictor serve."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handler.calibration import EDGE, IsotonicCalibrator, load_calibrator
    from handler.encoding import EncodingSettings
    from handler.predictor import Predictor
    from handler.runtime import TorchRuntime
    from handler.settings import HandlerSettings
    from training.evaluate import main as evaluate
    from training.scoring import score_texts
    output = tmp_path / "isotonic"
    metrics = train_tiny(tiny_base_model, story_dir, output, "--epochs", "1", "--augment", "none",
                         "--calibration-size", "24", "--calibrator", "isotonic")
    stored = json.loads((output / "calibration.json").read_text())
    assert (stored["format_version"], stored["kind"], stored["samples"]) == (2, "isotonic", 24)
    assert metrics["calibration"]["kind"] == "isotonic"
    calibrator = load_calibrator(output)
    assert isinstance(calibrator, IsotonicCalibrator)
    scored = evaluate(["--model", str(output), "--split", "validation"])
    assert scored["calibration"]["kind"] == "isotonic"
    after = metrics["calibration"]["validation"]["after"]
    assert scored["eval_loss"] == pytest.approx(after["nll"], abs=1e-3)
    texts = synthetic_reviews(8, seed=12)["text"].tolist()
    predictor = Predictor(output, "cpu", HandlerSettings(cpu_runtime="torch", cpu_precision="fp32"))
    answers, _ = predictor.predict(texts)
    served = [answer["probabilities"]["positive"] for answer in answers]
    model = AutoModelForSequenceClassification.from_pretrained(output).eval()
    expected = score_texts(TorchRuntime(model), AutoTokenizer.from_pretrained(output), texts,
                           EncodingSettings.load(output)).probabilities(calibrator)[:, 1]
    assert served == pytest.approx(expected.tolist(), abs=1e-6)
    assert all(EDGE - 1e-6 <= p <= 1 - EDGE + 1e-6 for p in served)
