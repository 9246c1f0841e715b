"""Replica exchange over the likelihood's temperature with split-Gibbs moves (``blindlens.tempered_split_gibbs``).

* Exact Gaussian test: every rung started from exact draws of its own tempered (floored) posterior
  stays inside the Monte-Carlo bands after two steps (both pair parities swap); the same with every
  swap accepted (a broken rule) must leave them.
* Gaussian-mixture test: prior-started chains reach the analytic mode weight with three rungs;
  the one-rung ladder (plain split Gibbs) with the same steps must not (it keeps the prior's 0.5).
* Ladder, determinism and bad input.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from blindlens.testing.lensed_gaussian import band_failures, gaussian_problem, mixture_problem, posterior_metrics

import blindlens.tempered_split_gibbs as tsg
from blindlens.gaussian_prior import GaussianSourcePrior, inverse_noise_variance
from blindlens.split_gibbs import SplitGibbsConfig, coupling_sigma, floor_sigma
from blindlens.tempered_split_gibbs import (
    geometric_ladder,
    initial_state,
    log_likelihood,
    sample_source_posterior_tempered,
    tempered_step,
)

Z = 4.0
BETAS = jnp.array([1.0, 0.85, 0.7])


def _floored_tempered_posteriors(prior, op, y, sigma, config):
    f = floor_sigma(prior, config)
    cov = prior.eigvecs @ jnp.diag(prior.eigvals) @ prior.eigvecs.T + f**2 * jnp.eye(prior.eigvals.size)
    floored = GaussianSourcePrior(prior.mean, cov, prior.sde, prior.pixel_scale)
    return [floored.posterior(op, y, sigma / float(np.sqrt(b))) for b in BETAS]


def _stepped(problem, n=2000):
    prior, op, y, sigma, config = problem
    posts = _floored_tempered_posteriors(prior, op, y, sigma, config)
    starts = jnp.stack([p.sample(jr.key(20 + k), n) for k, p in enumerate(posts)], axis=1)  # (n, K, s, s)
    w = inverse_noise_variance(sigma, op.image_shape, op)
    rho = coupling_sigma(None, prior, op, w, config)

    @eqx.filter_jit
    def run(keys, starts):
        def chain(key, s):
            state = initial_state(s)
            for k in jr.split(key, 2):  # an even and an odd step: every pair gets a chance to swap
                state = tempered_step(k, prior, op, y, w, state, BETAS, rho, config)
            return state

        return jax.vmap(chain)(keys, starts)

    return posts, run(jr.split(jr.key(21), n), starts)


@pytest.fixture(scope="module")
def gaussian():
    prior, op, y, sigma, _ = gaussian_problem(jr.key(2026), ns=8, ni=12)
    return prior, op, y, sigma, SplitGibbsConfig()


def test_every_rung_keeps_its_exact_tempered_posterior_and_always_swapping_fails(gaussian, x64, monkeypatch):
    posts, state = _stepped(gaussian)
    rate = np.asarray(state.swaps_accepted.sum(0) / state.swaps_attempted.sum(0))
    print(f"\nswap rates per pair {np.round(rate, 3)}")
    assert np.all(rate > 0.05) and np.all(rate < 0.95)  # the swaps happen, and are not all accepted
    for k, post in enumerate(posts):
        m = posterior_metrics(post, state.sources[:, k], 0.0)
        r = m["ratio_normalised"]
        print(f"rung {k} (beta {float(BETAS[k]):.2f}): chi2/d {m['chi2_per_dim']:.4f} (+- {m['chi2_sd']:.4f}), "
              f"offset {m['mean_offset']:.2f}, mode variance {float(r.min()):.2f}-{float(r.max()):.2f}")
        assert band_failures(m, Z, Z) == []

    # broken: accept every swap; the posterior's rung then holds the hotter rung's wider draws
    monkeypatch.setattr(tsg, "_swap_log_ratio", lambda betas, ll: jnp.full(ll.shape[:-1] + (ll.shape[-1] - 1,), jnp.inf))
    _, broken = _stepped(gaussian, n=2001)  # another shape: a fresh trace with the patched rule
    m = posterior_metrics(posts[0], broken.sources[:, 0], 0.0)
    print(f"always swapping: rung 0 chi2/d {m['chi2_per_dim']:.4f}")
    assert "chi2" in band_failures(m, Z, Z)


def test_mixture_mode_weights_with_three_rungs_and_not_with_one():
    """Prior-started chains reach the analytic mode weight; plain split Gibbs (one rung) keeps the prior's."""
    prior, op, y, sigma = mixture_problem()
    post = prior.posterior(op, y, sigma)
    w0 = float(post.weights[0])
    n, steps = 400, 40
    init = prior.sample(jr.key(4), n)
    se = np.sqrt(w0 * (1 - w0) / n)

    def weight(betas):
        res = sample_source_posterior_tempered(jr.key(5), prior, op, y, sigma, init, betas, num_samples=2,
                                               burn_in=steps)
        return float(jnp.mean(jnp.argmax(post.responsibilities(res.samples[:, -1]), axis=1) == 0)), res

    frac, res = weight(geometric_ladder(3, 0.03))
    rate = np.asarray(res.swap_rate.mean(0))
    print(f"\nmode-0 weight with 3 rungs: {frac:.3f}, analytic {w0:.3f} +- {se:.3f}; swap rates {np.round(rate, 2)}")
    assert abs(frac - w0) < Z * se
    assert np.all(rate > 0.2)
    assert res.passes.shape == (n,) and int(res.passes.min()) >= 3 * (steps + 2) * 2  # >= one Heun step per rung

    plain, _ = weight(jnp.array([1.0]))
    print(f"one rung (plain split Gibbs): {plain:.3f}")
    assert abs(plain - w0) > Z * se


def test_ladder_log_likelihood_determinism_and_bad_input(gaussian):
    prior, op, y, sigma, _ = gaussian
    b = np.asarray(geometric_ladder(4, 1e-3))
    np.testing.assert_allclose(b, [1.0, 0.1, 0.01, 0.001], rtol=1e-6)
    w = inverse_noise_variance(sigma, op.image_shape, op)
    s = prior.sample(jr.key(0), 3)
    expected = [-0.5 * float(jnp.sum(w * (y - op(x)) ** 2)) for x in s]
    np.testing.assert_allclose(np.asarray(log_likelihood(op, y, w, s)), expected, rtol=1e-5)

    config = SplitGibbsConfig(denoise_steps=4)
    a = sample_source_posterior_tempered(jr.key(1), prior, op, y, sigma, s, geometric_ladder(2, 0.1), num_samples=3,
                                         burn_in=1, thin=2, config=config)
    c = sample_source_posterior_tempered(jr.key(1), prior, op, y, sigma, s, geometric_ladder(2, 0.1), num_samples=3,
                                         burn_in=1, thin=2, config=config)
    assert a.samples.shape == (3, 3, 8, 8) and a.swap_rate.shape == (3, 1)
    np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(c.samples))

    with pytest.raises(ValueError, match="num_rungs"):
        geometric_ladder(1, 0.1)
    with pytest.raises(ValueError, match="beta_min"):
        geometric_ladder(3, 1.5)
    run = lambda betas, **kw: sample_source_posterior_tempered(jr.key(1), prior, op, y, sigma, s, betas,  # noqa: E731
                                                               num_samples=kw.pop("num_samples", 1), **kw)
    with pytest.raises(ValueError, match="start at 1"):
        run(jnp.array([0.9, 0.5]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        run(jnp.array([1.0, 0.5, 0.7]))
    with pytest.raises(ValueError, match="positive"):
        run(jnp.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="num_samples"):
        run(jnp.array([1.0, 0.5]), num_samples=0)
    with pytest.raises(ValueError, match="init must have shape"):
        sample_source_posterior_tempered(jr.key(1), prior, op, y, sigma, s[0], jnp.array([1.0]), num_samples=1)
