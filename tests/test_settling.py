"""Settling checks (blindlens.inference.settling) and the warm-up they extend (chain_runner.run_chains)."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import HMC, NUTS

from blindlens.chain_runner import run_chains
from blindlens.inference.settling import MIN_WINDOW, fit_trend, settle_check


def _ar1(rng, rho, chains, n):
    """Stationary AR(1) series of unit variance, ``(chains, n)``."""
    x = np.zeros((chains, n + 200))
    e = rng.normal(size=x.shape)
    for t in range(1, x.shape[1]):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * e[:, t]
    return x[:, 200:]


def test_fit_trend_matches_a_hand_computed_value():
    """Batch means (5 of 2 sweeps): before 10, 11, 9, 10, 10 (line fit: slope -0.1, residual ss 1.9),
    after 7, 8, 6, 7, 7 (the same shape): z = 3 / sqrt(2 * 1.9 / 3 / 5)."""
    before = np.repeat([10.0, 11.0, 9.0, 10.0, 10.0], 2)[None]
    after = before - 3.0
    z = fit_trend(before, after)
    assert z.shape == (1,)
    assert z[0] == pytest.approx(3.0 / np.sqrt(2 * 1.9 / 3 / 5), rel=1e-12)
    assert fit_trend(after, before)[0] == pytest.approx(-z[0])  # a worsening fit is negative
    assert not settle_check(after, before, threshold=5.5).settled  # z = 5.96
    assert settle_check(after, before, threshold=6.5).settled


def test_a_pure_trend_is_caught_with_any_scatter_about_it():
    """A straight line through both windows leaves no scatter about the line: z is infinite (but for rounding), while the
    plain batch-mean variance (the trend counted as noise) would give only 10."""
    x = np.linspace(100.0, 0.0, 40)[None]
    assert fit_trend(x[:, :20], x[:, 20:])[0] > 1e6  # infinite but for rounding
    assert fit_trend(np.ones((2, 10)), np.ones((2, 10))).tolist() == [0.0, 0.0]


def test_stationary_windows_rarely_count_as_settling():
    """Monte Carlo on 8,000 white-noise chains (two windows of 100): the false-alarm rate at |z| > 4
    is 0.69% by a separate simulation of 20,000 (t-like tails with 6 degrees of freedom); bounds at 4
    binomial sd. A test that ignored the sign's other side would see half as many."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8000, 200))
    check = settle_check(x[:, 100:], x[:, :100])
    assert abs(check.drifting.mean() - 0.0069) < 4 * np.sqrt(0.0069 * 0.9931 / 8000)
    assert np.any(check.drifting & (check.z < 0)) and np.any(check.drifting & (check.z > 0))


def test_a_trend_of_two_sd_per_window_is_caught_in_correlated_chains():
    """AR(1) with lag-one correlation 0.5 and a linear trend of 4 sd over the two windows, rising (a fit
    that worsens as an overfitted source relaxes) or falling: caught in all but 0.03% of chains by
    simulation; the same chains without the trend in 0.9%."""
    rng = np.random.default_rng(1)
    x = _ar1(rng, 0.5, 2000, 200)
    for trend in (np.linspace(-2.0, 2.0, 200), np.linspace(2.0, -2.0, 200)):
        assert settle_check((x + trend)[:, 100:], (x + trend)[:, :100]).drifting.mean() > 0.99
    assert settle_check(x[:, 100:], x[:, :100]).drifting.mean() < 0.02


def test_settle_check_splits_one_window_and_skips_short_ones():
    x = np.concatenate([np.full(20, 5.0), np.full(20, 1.0)])[None] + 0.01 * np.arange(40) % 0.03
    check = settle_check(x)  # no earlier window: the halves are compared
    assert bool(check.drifting[0]) and not check.settled and check.describe().startswith("chain 0 (z ")
    short = settle_check(x[:, : 2 * MIN_WINDOW - 2])
    assert np.isnan(short.z[0]) and short.settled and short.describe() == ""
    nan = settle_check(np.full((1, 20), np.nan), np.zeros((1, 20)))
    assert nan.settled


def test_fit_trend_rejects_bad_windows_in_one_line():
    with pytest.raises(ValueError, match="as many chains"):
        fit_trend(np.zeros((2, 20)), np.zeros((3, 20)))
    with pytest.raises(ValueError, match="at least 10 sweeps"):
        fit_trend(np.zeros((2, 8)), np.zeros((2, 20)))


# ---- the warm-up that the check extends --------------------------------------------------------


def _normal_model():
    numpyro.sample("x", dist.Normal(0.0, 1.0))


def _slow_kernel():
    """One leapfrog step of 0.15 without adaptation (MALA-like): from x = 8 the chain needs some 250
    sweeps to reach the bulk, and its autocorrelation time is about 90 sweeps."""
    return HMC(_normal_model, step_size=0.15, trajectory_length=0.15, adapt_step_size=False,
               adapt_mass_matrix=False)


def test_chains_still_settling_get_a_longer_warm_up_and_unbiased_draws():
    """Six runs of two chains started at x = 8 and -7 after a 20-sweep warm-up. Without the check (the
    broken variant) the kept draws still carry the transient: signed mean 2.2 by simulation. With it the
    warm-up is extended by 200-400 sweeps and the signed mean of the 12 chains is 0.1 by simulation,
    against a Monte Carlo sd of about 0.2 (chain means of 200 draws with tau ~ 90)."""
    signed = {0: [], 800: []}
    extra = []
    for seed in range(6):
        for budget in signed:
            run = run_chains(_slow_kernel(), jr.key(seed), num_chains=2, num_warmup=20, num_draws=200, chunk=100,
                             init_params={"x": jnp.array([8.0, -7.0])}, progress=False, max_extra_warmup=budget)
            signed[budget].extend((np.asarray(run.samples["x"]).mean(1) * np.array([1.0, -1.0])).tolist())
            if budget:
                extra.append(run.extra_warmup)
            assert run.samples["x"].shape == (2, 200)
    assert np.mean(signed[0]) > 1.5  # the broken variant: the transient is in the posterior
    assert abs(np.mean(signed[800])) < 0.6
    assert min(extra) >= 100 and max(extra) <= 800


def test_settled_chains_are_sampled_exactly_as_without_the_check():
    """NUTS from the bulk: the first chunk passes, and the draws equal a run without the check."""
    kw = dict(num_chains=2, num_warmup=50, num_draws=100, chunk=50, progress=False)
    plain = run_chains(NUTS(_normal_model), jr.key(3), **kw)
    checked = run_chains(NUTS(_normal_model), jr.key(3), max_extra_warmup=200, **kw)
    assert checked.extra_warmup == 0
    np.testing.assert_array_equal(plain.samples["x"], checked.samples["x"])


def test_a_run_killed_while_settling_resumes_exactly(tmp_path):
    """The clock raises at the second 'still settling' line (after that chunk's checkpoint): the rerun
    of the same call continues from it and ends with the uninterrupted run's draws."""
    from blindlens.chain_runner import RunClock

    class Killer(RunClock):
        def __init__(self):
            super().__init__(enabled=False)
            self.lines = 0

        def say(self, message):
            if message.startswith("still settling"):
                self.lines += 1
                if self.lines == 2:
                    raise KeyboardInterrupt

    kw = dict(num_chains=2, num_warmup=20, num_draws=100, chunk=100, progress=False, max_extra_warmup=800,
              init_params={"x": jnp.array([8.0, -7.0])}, fingerprint={"run": "settle"})
    whole = run_chains(_slow_kernel(), jr.key(0), **kw)
    assert whole.extra_warmup >= 200  # the premise: at least two chunks discarded
    ckpt = tmp_path / "post.nc.ckpt.npz"
    with pytest.raises(KeyboardInterrupt):
        run_chains(_slow_kernel(), jr.key(0), checkpoint=ckpt, clock=Killer(), **kw)
    resumed = run_chains(_slow_kernel(), jr.key(0), checkpoint=ckpt, **kw)
    assert resumed.extra_warmup == whole.extra_warmup
    np.testing.assert_array_equal(resumed.samples["x"], whole.samples["x"])


def test_run_chains_rejects_a_negative_extra_warmup():
    with pytest.raises(ValueError, match="max_extra_warmup must be >= 0"):
        run_chains(NUTS(_normal_model), jr.key(0), num_draws=10, max_extra_warmup=-1, progress=False)


def test_the_first_reference_is_the_warm_up_tail_after_its_descent():
    """A blindlens kernel's first warm-up sweeps descend by another source move; the reference window
    starts after them, and a tail shorter than MIN_WINDOW gives none (the first chunk's halves judge)."""
    from types import SimpleNamespace

    from blindlens.inference.chain_runner import _settle_reference

    energy = np.arange(2 * 40, dtype=float).reshape(2, 40)
    mcmc = SimpleNamespace(get_extra_fields=lambda group_by_chain: {"potential_energy": energy})
    kernel = SimpleNamespace(descent_sweeps=lambda num_warmup: num_warmup // 2)
    np.testing.assert_array_equal(_settle_reference(kernel, mcmc, 40, 2, chunk=100), energy[:, 20:])
    np.testing.assert_array_equal(_settle_reference(kernel, mcmc, 40, 2, chunk=12), energy[:, 28:])
    np.testing.assert_array_equal(_settle_reference(object(), mcmc, 40, 2, chunk=30), energy[:, 10:])
    assert _settle_reference(SimpleNamespace(descent_sweeps=lambda n: 35), mcmc, 40, 2, chunk=100) is None
