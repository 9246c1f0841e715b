"""Rank-normalised split R-hat and bulk ESS: the one definition behind every convergence verdict."""

import arviz as az
import numpy as np
import pytest
from numpyro.diagnostics import split_gelman_rubin

from blindlens.inference.mixing_diagnostics import bulk_ess, rank_normalized_split_rhat, split_rhat_and_ess


def _ar1(rng, chains, draws, phi, offsets=None):
    x = np.zeros((chains, draws))
    noise = rng.normal(size=(chains, draws))
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x if offsets is None else x + np.asarray(offsets, float)[:, None]


def _cases():
    rng = np.random.default_rng(0)
    return {
        "iid": rng.normal(size=(2, 300)),
        "autocorrelated, odd length": _ar1(rng, 4, 301, 0.9),
        "separated chains": _ar1(rng, 2, 300, 0.5, [0.0, 50.0]),
        "heavy tails": rng.standard_cauchy(size=(3, 200)),
        "ties": np.round(rng.normal(size=(2, 100)), 1),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_rhat_and_bulk_ess_are_arviz_s(name):
    """R-hat equals ArviZ's rank-normalised R-hat to rounding; the bulk ESS agrees within the two
    autocorrelation estimators' difference (Geyer truncation; measured up to 2.3% on these)."""
    x = _cases()[name]
    assert rank_normalized_split_rhat(x) == pytest.approx(float(az.rhat(x, method="rank")), abs=1e-12)
    assert bulk_ess(x) == pytest.approx(float(az.ess(x, method="bulk")), rel=0.05)


def test_chains_that_never_overlap_give_a_bounded_rhat_the_classic_one_does_not():
    """Two chains 50 sd apart: the summary table (ArviZ) says about 1.8; the classic split R-hat
    (what check_run printed before) says 25 for the same draws -- the mismatch this module ends."""
    x = _cases()["separated chains"]
    rhat = rank_normalized_split_rhat(x)
    assert 1.5 < rhat < 2.6
    assert float(split_gelman_rubin(x)) > 10 * rhat
    assert rank_normalized_split_rhat(np.exp(x / 10)) == pytest.approx(rhat, abs=1e-12)  # monotone: unchanged


def test_a_scale_difference_alone_is_caught_by_the_folded_rhat():
    """Chains with the same centre and different widths: the bulk R-hat misses it, the tail one not."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 400)) * np.array([[1.0], [4.0]])
    assert rank_normalized_split_rhat(x) > 1.05


def test_too_few_or_bad_draws_give_nan():
    assert all(np.isnan(v) for v in split_rhat_and_ess(np.zeros((2, 3))))
    assert all(np.isnan(v) for v in split_rhat_and_ess(np.array([[0.0, 1.0, np.nan, 2.0], [1, 2, 3, 4]])))
    assert np.isnan(split_rhat_and_ess(np.ones((2, 10)))[1])
