"""Temperature scaling and calibration metrics on synthetic logits with known answers."""
import math

import numpy as np
import pytest
import torch

from handler.calibration import Calibration, short_texts
from training.calibration import (brier, calibration_report, ece_if_calibrated,
                                  expected_calibration_error, fit_by_length,
                                  fit_temperature, nll, reliability_bins, reliability_diagram,
                                  softmax)


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
    report = calibration_report(logits * 3, labels, fit_temperature(logits * 3, labels))
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
        fit_temperature(logits, labels)


def test_probabilities_must_be_probabilities():
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error([[2.0, -1.0]], [0])
    with pytest.raises(ValueError, match="temperature must be"):
        calibration_report([[2.0, -1.0]], [0], 0.0)


def test_reliability_diagram_is_written(tmp_path):
    long_logits, long_labels = calibrated(2000, seed=5)
    short_logits, short_labels = calibrated(240, seed=6)
    path = tmp_path / "reliability.png"
    per_text = torch.full((240,), 2.0, dtype=torch.float64)
    reliability_diagram(path, {"IMDB validation": (long_logits * 2, long_labels, 2.0),
                               "short reviews": (short_logits * 2, short_labels, per_text)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_short_and_long_texts_get_their_own_temperatures():
    """Short texts over-confident (T = 3), long ones under-confident (T = 0.8): each side's
    temperature is recovered, and served by length."""
    short_logits, short_labels = calibrated(20_000, seed=7)
    long_logits, long_labels = calibrated(20_000, seed=8)
    logits = torch.cat([short_logits * 3, long_logits * 0.8])
    labels = torch.cat([short_labels, long_labels])
    lengths = torch.cat([torch.randint(3, 65, (20_000,)), torch.randint(65, 257, (20_000,))])
    long, short = fit_by_length(logits, labels, short_texts(lengths, 64))
    assert short == pytest.approx(3.0, rel=0.05) and long == pytest.approx(0.8, rel=0.05)
    calibration = Calibration(long, short, 64)
    temperatures = calibration.temperatures(lengths)
    assert torch.equal(temperatures == short, lengths <= 64)
    report = calibration_report(logits, labels, temperatures)
    assert report["after"]["ece"] < 0.02 < report["before"]["ece"]
    assert report["temperature"] == pytest.approx(sorted([long, short]))
    # one temperature where a side has too few texts to fit on
    few = torch.cat([lengths[:50], lengths[20_000:]])
    one, none = fit_by_length(torch.cat([logits[:50], logits[20_000:]]),
                              torch.cat([labels[:50], labels[20_000:]]), short_texts(few, 64))
    assert none is None and one == pytest.approx(0.8, rel=0.1)


def test_a_calibration_file_round_trips_and_an_old_one_serves_one_temperature(tmp_path):
    Calibration(0.9, 1.3, 64, "held-out texts", 2000).save(tmp_path)
    loaded = Calibration.load(tmp_path)
    assert loaded == Calibration(0.9, 1.3, 64, "held-out texts", 2000)
    assert loaded.temperatures([10, 64, 65, 256]).tolist() == pytest.approx([1.3, 1.3, 0.9, 0.9])
    (tmp_path / "calibration.json").write_text('{"temperature": 1.7}')  # before the length split
    assert Calibration.load(tmp_path).temperatures([10, 256]).tolist() == pytest.approx([1.7, 1.7])
    Calibration.remove(tmp_path)
    assert Calibration.load(tmp_path).temperatures([10]).tolist() == [1.0]
