"""The error map: fitting, calibration measures, the suggested click, and its reliability
on held-out data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.model.error_map import (
    ErrorModel, auroc, calibration, features, fit, next_click,
)


def test_ece_and_auroc_are_what_their_definitions_say():
    predicted = np.array([0.1, 0.1, 0.9, 0.9])
    wrong = np.array([False, False, True, False])
    got = calibration(predicted, wrong, bins=10)
    # Two bins: 0.1 predicted, 0 observed; 0.9 predicted, 0.5 observed (half the pixels each).
    assert got["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert got["auroc"] == pytest.approx(2.5 / 3)  # one tie with a right pixel counts half
    assert auroc(np.array([0.2, 0.8, 0.5]), np.array([True, False, False])) == pytest.approx(0.0)
    assert auroc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)


def test_a_fitted_error_map_is_calibrated_on_held_out_pixels_of_the_same_kind():
    """Pixels whose label is wrong with a probability that grows with their doubt: the
    fitted map is reliable on a second draw (ECE below 0.02) and ranks them well."""
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        prob = rng.uniform(0, 1, n)
        variance = (rng.uniform(0, 0.2, n) * (1 - 2 * np.abs(prob - 0.5))) ** 2
        x = np.stack([np.log(np.sqrt(variance) + 1e-4), np.abs(prob - 0.5),
                      np.log1p(rng.uniform(0, 5, n))], axis=1)
        truth = 1 / (1 + np.exp(-(0.5 * x[:, 0] - 8 * x[:, 1] + 1.0)))
        return x, rng.random(n) < truth

    x, wrong = draw(40_000)
    model = fit(x, wrong)
    held_x, held_wrong = draw(40_000)
    z = held_x @ np.array(model.weights) + model.bias
    got = calibration(1 / (1 + np.exp(-z)), held_wrong)
    assert got["ece"] < 0.02 and got["auroc"] > 0.75
    assert ErrorModel.from_dict(model.to_dict()) == model
    with pytest.raises(ValueError, match="features"):
        ErrorModel.from_dict({"features": ["x"], "weights": [1.0], "bias": 0.0})


def test_the_map_is_a_probability_and_the_suggested_click_lands_in_the_likeliest_error():
    prob = np.zeros((40, 40), np.float32)
    prob[5:30, 5:30] = 0.9
    variance = np.zeros_like(prob)
    variance[20:30, 20:30] = 0.04  # doubt in one corner of the mask
    x = features(prob, variance)
    assert x.shape == (40, 40, 3)
    error = ErrorModel((1.0, -4.0, 0.0), 2.0)(prob, variance)
    assert error.dtype == np.float32 and 0 <= error.min() and error.max() <= 1
    assert error[25, 25] > error[10, 10]
    row, col, positive = next_click(error, prob > 0.5, threshold=float(error[25, 25]) - 1e-3)
    assert 20 <= row < 30 and 20 <= col < 30 and not positive  # inside the mask: negative
    assert next_click(np.zeros_like(error), prob > 0.5) is None
