"""The calibrators (temperature, isotonic) and the calibration metrics on synthetic logits with
known answers; calibration.json's formats, old and new."""
import json
import math

import numpy as np
import pytest
import torch

from handler.calibration import (EDGE, UNCALIBRATED, CalibrationError, IsotonicCalibrator,
                                 TemperatureCalibrator, fit_temperature, load_calibrator,
                                 remove_calibrator, save_calibrator, short_texts)
from training.calibration import (brier, calibration_report, ece_if_calibrated,
                                  expected_calibration_error, nll, reliability_bins,
                                  reliability_diagram)
from training.scoring import Scores


def softmax(logits):
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1)


def scored(logits, labels, lengths=None) -> Scores:
    lengths = torch.full((len(labels),), 200) if lengths is None else lengths
    return Scores(torch.as_tensor(logits).float(), lengths, torch.as_tensor(labels))


def calibrated(samples: int, classes: int = 2, scale: float = 2.0, seed: int = 0):
    """Logits z and labels drawn from softmax(z): softmax(z) is calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(samples, classes, generator=generator, dtype=torch.float64) * scale
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true_temperature,classes", [(2.5, 2), (0.6, 2), (1.8, 4)])
def test_a_known_temperature_is_recovered(true_temperature, classes):
    logits, labels = calibrated(40_000, classes, seed=1)
    fitted = fit_temperature(logits * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.03)


def test_calibrated_logits_need_no_temperature_and_scaling_keeps_predictions():
    logits, labels = calibrated(40_000, seed=2)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.03)
    calibrator = TemperatureCalibrator(fit_temperature(logits * 3, labels))
    report = calibration_report(scored(logits * 3, labels), calibrator)
    assert report["after"]["accuracy"] == report["before"]["accuracy"]
    assert report["after"]["ece"] < 0.02 < 0.05 < report["before"]["ece"]
    assert report["after"]["nll"] < report["before"]["nll"]
    assert report["after"]["brier"] < report["before"]["brier"]
    assert report["samples"] == 40_000 and report["ece_bins"] == 15


def test_ece_of_a_calibrated_set_is_near_zero():
    logits, labels = calibrated(50_000, seed=3)
    assert expected_calibration_error(softmax(logits), labels) < 0.02


def test_the_noise_floor_covers_a_calibrated_small_set_and_shrinks_with_size():
    # 240 calibrated answers (the short-review set's size) show an ECE of a few points that is
    # pure sampling noise; the floor says so, and it falls like 1/sqrt(n)
    floors, hits = [], 0
    for seed in range(20):
        logits, labels = calibrated(240, seed=100 + seed)
        probs = softmax(logits)
        floor = ece_if_calibrated(probs)
        hits += expected_calibration_error(probs, labels) <= floor["p95"]
        floors.append(floor["median"])
    assert hits >= 17  # the 95th percentile holds about 19 of 20 calibrated sets
    assert 0.01 < sum(floors) / len(floors) < 0.06
    large = ece_if_calibrated(softmax(calibrated(24_000, seed=5)[0]))
    assert large["median"] < sum(floors) / len(floors) / 5
    # an over-confident small set is outside its floor
    logits, labels = calibrated(240, seed=6)
    assert expected_calibration_error(softmax(logits * 4), labels) > ece_if_calibrated(
        softmax(logits * 4))["p95"]


def test_ece_of_an_over_confident_set_is_large():
    logits, labels = calibrated(20_000, seed=4)
    assert expected_calibration_error(softmax(logits * 4), labels) > 0.1


def test_ece_by_hand():
    # bin (0.6, 0.667]: 0.65 twice, one right -> |0.5 - 0.65|; bin (0.933, 1]: 0.95 right -> 0.05
    probs = [[0.65, 0.35], [0.35, 0.65], [0.05, 0.95]]
    labels = [0, 0, 1]
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * 0.15 + 0.05) / 3)
    rows = reliability_bins(probs, labels)
    assert len(rows) == 15 and sum(row["count"] for row in rows) == 3
    assert rows[9]["count"] == 2 and rows[9]["accuracy"] == 0.5
    assert rows[0]["accuracy"] is None  # empty bins are not averaged
    # a top probability exactly on an edge goes to the lower bin; 1.0 to the last bin
    assert [row["count"] for row in reliability_bins([[0.6, 0.4], [0.0, 1.0]], [0, 1])][8::6] == [1, 1]


def test_nll_and_brier_by_hand():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 0, 1])
    assert nll(probs, labels) == pytest.approx(-(math.log(0.8) + math.log(0.3) + math.log(0.5)) / 3)
    assert brier(probs, labels) == pytest.approx((2 * 0.2 ** 2 + 2 * 0.7 ** 2 + 2 * 0.5 ** 2) / 3)
    assert brier([[1.0, 0.0]], [0]) == 0 and brier([[0.0, 1.0]], [0]) == 2
    assert nll([[0.0, 1.0]], [0]) == pytest.approx(-math.log(1e-12))  # clipped, finite


@pytest.mark.parametrize("logits,labels,message", [
    ([0.1, 0.2], [0, 1], "samples, classes"),
    ([[0.1, 0.2]], [0, 1], "labels must be"),
    ([[0.1, 0.2]], [2], "labels must be in"),
    ([[0.1, 0.2]], [0.5], "class indices"),
    ([[float("nan"), 0.2]], [0], "NaN"),
    (np.zeros((0, 2)), [], "samples > 0"),
])
def test_bad_input_is_refused(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(logits, labels)


def test_probabilities_must_be_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error([[2.0, -1.0]], [0])


def test_reliability_diagram_is_written(tmp_path):
    long_logits, long_labels = calibrated(2000, seed=5)
    short_logits, short_labels = calibrated(240, seed=6)
    path = tmp_path / "reliability.png"
    reliability_diagram(path, {
        "IMDB validation": (scored(long_logits * 2, long_labels), TemperatureCalibrator(2.0)),
        "short reviews": (scored(short_logits * 2, short_labels, torch.full((240,), 10)),
                          TemperatureCalibrator(1.0, 2.0))})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def by_length(samples: int = 20_000):
    """Short texts over-confident (T = 3), long ones under-confident (T = 0.8): logits, labels,
    lengths."""
    short_logits, short_labels = calibrated(samples, seed=7)
    long_logits, long_labels = calibrated(samples, seed=8)
    logits = torch.cat([short_logits * 3, long_logits * 0.8])
    labels = torch.cat([short_labels, long_labels])
    lengths = torch.cat([torch.randint(3, 65, (samples,)), torch.randint(65, 257, (samples,))])
    return logits, labels, lengths


def test_short_and_long_texts_get_their_own_temperatures():
    """Each side's temperature is recovered, and served by length."""
    logits, labels, lengths = by_length()
    calibrator = TemperatureCalibrator.fit(logits, lengths, labels, "synthetic")
    short, long = calibrator.short_temperature, calibrator.temperature
    assert short == pytest.approx(3.0, rel=0.05) and long == pytest.approx(0.8, rel=0.05)
    assert calibrator.samples == 40_000 and calibrator.fitted_on == "synthetic"
    temperatures = calibrator.temperatures(lengths)
    assert torch.equal(temperatures == torch.tensor(short, dtype=torch.float32), lengths <= 64)
    report = calibration_report(scored(logits, labels, lengths), calibrator)
    assert report["after"]["ece"] < 0.02 < report["before"]["ece"]
    assert report["calibrator"] == calibrator.describe()
    # one temperature where a side has too few texts to fit on, and the fit says so
    few = torch.cat([torch.arange(50), torch.arange(20_000, 40_000)])
    one = TemperatureCalibrator.fit(logits[few], lengths[few], labels[few], "synthetic")
    assert one.short_temperature is None and one.temperature == pytest.approx(0.8, rel=0.1)
    assert "one temperature: fewer than 100 texts" in one.fitted_on


def test_the_temperature_calibrator_serves_what_the_served_formula_always_gave(tmp_path):
    """calibration.json of the first format (fields only, no format_version): loaded, it serves
    softmax(float32 logits / each text's float32 temperature), bit for bit."""
    (tmp_path / "calibration.json").write_text(json.dumps(
        {"temperature": 1.2345, "short_temperature": 0.8765, "short_tokens": 64,
         "fitted_on": "1000 held-out reviews", "samples": 2000}))
    calibrator = load_calibrator(tmp_path)
    assert isinstance(calibrator, TemperatureCalibrator)
    logits = torch.randn(300, 2, generator=torch.Generator().manual_seed(3)) * 4
    lengths = torch.randint(3, 257, (300,), generator=torch.Generator().manual_seed(4))
    temperatures = torch.where(lengths <= 64, torch.tensor(0.8765), torch.tensor(1.2345))
    expected = (logits / temperatures[:, None]).softmax(dim=-1)
    assert torch.equal(calibrator.apply(logits, lengths), expected)
    assert torch.equal(UNCALIBRATED.apply(logits, lengths), logits.softmax(dim=-1))


def test_isotonic_mends_a_miscalibration_of_shape_that_one_temperature_cannot():
    """Confidences too low in the middle and too high at the top: no single temperature fits
    both, a monotone map does. It keeps the order of the margins and stays inside the edges."""
    generator = torch.Generator().manual_seed(11)
    margins = torch.randn(40_000, generator=generator, dtype=torch.float64) * 3
    true_positive = torch.sigmoid(torch.sign(margins) * margins.abs().sqrt() * 2)
    labels = (torch.rand(40_000, generator=generator, dtype=torch.float64)
              < true_positive).long()
    logits = torch.stack([torch.zeros_like(margins), margins], dim=-1)
    lengths = torch.full((40_000,), 200)
    fit, held = torch.arange(20_000), torch.arange(20_000, 40_000)
    isotonic = IsotonicCalibrator.fit(logits[fit], lengths[fit], labels[fit])
    temperature = TemperatureCalibrator.fit(logits[fit], lengths[fit], labels[fit])
    held_out = scored(logits[held], labels[held], lengths[held])
    by_isotonic = calibration_report(held_out, isotonic)["after"]
    by_temperature = calibration_report(held_out, temperature)["after"]
    assert by_isotonic["ece"] < 0.015 < 0.03 < by_temperature["ece"]
    assert by_isotonic["nll"] < by_temperature["nll"]
    positive = isotonic.apply(logits[held], lengths[held])[:, 1]
    order = margins[held].argsort()
    assert (positive[order].diff() >= 0).all()
    assert positive.min() >= EDGE - 1e-7 and positive.max() <= 1 - EDGE + 1e-7
    assert torch.allclose(isotonic.apply(logits[held], lengths[held]).sum(-1), torch.ones(20_000))


def test_isotonic_maps_short_and_long_texts_apart_and_needs_two_classes():
    logits, labels, lengths = by_length()
    calibrator = IsotonicCalibrator.fit(logits, lengths, labels)
    assert calibrator.short is not None and "up to 64 tokens" in calibrator.describe()
    report = calibration_report(scored(logits, labels, lengths), calibrator)
    assert report["after"]["ece"] < 0.02 < report["before"]["ece"]
    with pytest.raises(CalibrationError, match="2 classes"):
        IsotonicCalibrator.fit(torch.zeros(200, 3), torch.full((200,), 10),
                               torch.arange(200) % 3)


@pytest.mark.parametrize("kind", [TemperatureCalibrator, IsotonicCalibrator])
def test_a_calibrator_round_trips_with_its_format_version(kind, tmp_path):
    logits, labels, lengths = by_length(2_000)
    calibrator = kind.fit(logits, lengths, labels, "held-out texts")
    path = save_calibrator(calibrator, tmp_path)
    saved = json.loads(path.read_text())
    assert saved["format_version"] == 2 and saved["kind"] == kind.kind
    loaded = load_calibrator(tmp_path)
    assert loaded == calibrator
    assert torch.equal(loaded.apply(logits, lengths), calibrator.apply(logits, lengths))
    remove_calibrator(tmp_path)
    assert load_calibrator(tmp_path) is UNCALIBRATED


@pytest.mark.parametrize("saved,message", [
    ({"format_version": 3, "kind": "temperature", "temperature": 1.0}, "format_version 3"),
    ({"format_version": 2, "kind": "platt", "temperature": 1.0}, "unknown calibrator kind"),
    ({"format_version": 2, "kind": "isotonic", "long": [[1.0, 0.0], [0.2, 0.8]]},
     "margins ascending"),
    ({"short_temperature": 1.0}, "temperature"),
])
def test_a_calibration_file_this_code_cannot_serve_is_a_clear_error(saved, message, tmp_path):
    (tmp_path / "calibration.json").write_text(json.dumps(saved))
    with pytest.raises(CalibrationError, match=message) as error:
        load_calibrator(tmp_path)
    assert "calibration.json" in str(error.value)


def test_an_old_calibration_file_serves_one_temperature_by_length_rules(tmp_path):
    save_calibrator(TemperatureCalibrator(0.9, 1.3, 64, "held-out texts", 2000), tmp_path)
    loaded = load_calibrator(tmp_path)
    assert loaded == TemperatureCalibrator(0.9, 1.3, 64, "held-out texts", 2000)
    assert loaded.temperatures([10, 64, 65, 256]).tolist() == pytest.approx([1.3, 1.3, 0.9, 0.9])
    (tmp_path / "calibration.json").write_text('{"temperature": 1.7}')  # before the length split
    assert load_calibrator(tmp_path).temperatures([10, 256]).tolist() == pytest.approx([1.7, 1.7])
    assert short_texts([64, 65]).tolist() == [True, False]
