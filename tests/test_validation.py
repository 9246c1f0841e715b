"""TARP coverage: uniform for a calibrated posterior, biased for over-/under-dispersed ones."""

import numpy as np
import pytest

from blindlens.validation import tarp_coverage


def _ensemble(scale, n_sims=400, n_samples=200, d=3, seed=0):
    # posterior N(mu, 1) with truth ~ N(mu, 1): calibrated when the samples' scale is 1
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n_sims, d)) * 3
    truths = mu + rng.normal(size=(n_sims, d))
    samples = mu[:, None, :] + scale * rng.normal(size=(n_sims, n_samples, d))
    refs = rng.uniform(truths.min(0), truths.max(0), size=truths.shape)
    return samples, truths, refs


def test_calibrated_posterior_has_diagonal_coverage():
    alpha, ecp, atc = tarp_coverage(*_ensemble(1.0))
    # ECP(alpha) is a mean of 400 Bernoulli(alpha) indicators: sd <= 0.025, 4 sd band
    assert np.max(np.abs(ecp - alpha)) < 0.1
    assert abs(atc) < 0.03


def test_miscalibrated_posteriors_fail():
    # TARP with random references is weak against dispersion errors (data-and-validation.md
    # §B.2), so the controls are strong: 3x too narrow, 3x too wide, and shifted by 1.5 sd.
    # The calibrated ensemble's max |ECP - alpha| is 0.075 (4 sd of a Bernoulli mean: 0.1).
    narrow, wide, shifted = _ensemble(1 / 3), _ensemble(3.0), _ensemble(1.0)
    shifted = (shifted[0] + 1.5, shifted[1], shifted[2])
    for case in (narrow, wide, shifted):
        alpha, ecp, _ = tarp_coverage(*case)
        assert np.max(np.abs(ecp - alpha)) > 0.2
    assert tarp_coverage(*wide)[2] > 0.05


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="n_sims"):
        tarp_coverage(np.zeros((3, 4)), np.zeros((3, 2)), np.zeros((3, 2)))
