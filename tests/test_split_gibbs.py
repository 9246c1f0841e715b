"""The exact split-Gibbs source move (issue 19) against exact answers.

* Linear algebra: the power method and the Chebyshev matrix function against dense ``eigh``.
* The data step: its mean map and covariance square root, exactly, in float64.
* The move: exact posterior draws (under the prior floored at ``sigma(t_final)``) moved three
  times stay inside the Monte-Carlo bands of ``tests/test_source_posterior.py`` (4 sigma); the same
  move with white auxiliary noise (the covariance correction dropped) must leave them.
* Clear errors for bad input. (Mode weights of the Gaussian-mixture posterior: chains of this move keep the
  mode they start in; ``tests/test_tempered_split_gibbs.py`` shows it and tests the replica-exchange sampler
  that crosses.)
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from blindlens.testing.lensed_gaussian import (
    band_failures,
    gaussian_problem,
    posterior_metrics,
)

import blindlens.split_gibbs as sg
from blindlens.gaussian_prior import (
    GaussianSourcePrior,
    inverse_noise_variance,
    operator_matrix,
)
from blindlens.linear_operator import (
    chebyshev_apply,
    chebyshev_coefficients,
    power_iteration,
)
from blindlens.split_gibbs import (
    SplitGibbsConfig,
    auxiliary_draw,
    auxiliary_covariance_error,
    coupling_sigma,
    floor_sigma,
    sample_source_posterior_split_gibbs,
    split_gibbs_move,
)

Z = 4.0


def _dense_normal_matrix(op, sigma):
    a = np.asarray(operator_matrix(op), np.float64)
    return a.T @ a / sigma**2


def test_power_iteration_and_chebyshev_match_dense_linear_algebra(x64, getkey):
    _, op, _, sigma, _ = gaussian_problem(jr.key(3), ns=8, ni=12)
    c = _dense_normal_matrix(op, sigma)
    lam = np.linalg.eigvalsh(c)
    est = float(power_iteration(lambda v: jnp.asarray(c) @ v, jr.normal(getkey(), (c.shape[0],)), 300))
    assert est == pytest.approx(lam[-1], rel=1e-6)
    assert est <= lam[-1] * (1 + 1e-12)  # a Rayleigh quotient never overshoots

    m = 0.8 * c / lam[-1]  # spectrum in [0, 0.8]
    w, vec = np.linalg.eigh(m)
    v = np.asarray(jr.normal(getkey(), (m.shape[0],)))
    exact = vec @ (np.sqrt(np.clip(1 - w, 0, None)) * (vec.T @ v))
    coeffs = chebyshev_coefficients(lambda x: np.sqrt(1 - x), 0.0, 0.9, 24)
    approx = np.asarray(chebyshev_apply(lambda u: jnp.asarray(m) @ u, jnp.asarray(v), coeffs, 0.0, 0.9))
    assert np.linalg.norm(approx - exact) / np.linalg.norm(exact) < 1e-6
    # a polynomial is reproduced exactly at its own degree
    cubic = chebyshev_coefficients(lambda x: 2 * x**3 - x + 0.5, 0.0, 0.9, 3)
    got = np.asarray(chebyshev_apply(lambda u: jnp.asarray(m) @ u, jnp.asarray(v), cubic, 0.0, 0.9))
    np.testing.assert_allclose(got, 2 * m @ m @ m @ v - m @ v + 0.5 * v, rtol=1e-10, atol=1e-12)
    # control: the expansion of a different function does not pass
    wrong = chebyshev_coefficients(lambda x: np.sqrt(1 + x), 0.0, 0.9, 24)
    bad = np.asarray(chebyshev_apply(lambda u: jnp.asarray(m) @ u, jnp.asarray(v), wrong, 0.0, 0.9))
    assert np.linalg.norm(bad - exact) / np.linalg.norm(exact) > 1e-2


def test_auxiliary_draw_has_the_stated_mean_map_and_covariance(x64):
    prior, op, y, sigma, _ = gaussian_problem(jr.key(3), ns=8, ni=12)
    w = inverse_noise_variance(sigma, op.image_shape, op)
    config = SplitGibbsConfig()
    c = _dense_normal_matrix(op, sigma)
    rho = float(coupling_sigma(jr.key(0), prior, op, w, config))
    assert rho**2 * np.linalg.eigvalsh(c)[-1] == pytest.approx(config.coupling, rel=1e-3)
    # few power iterations: lambda_max is underestimated, never by more than spectrum_bound allows
    for iterations in (1, 2, 8):
        r = float(coupling_sigma(None, prior, op, w, dataclasses.replace(config, power_iterations=iterations)))
        assert config.coupling * (1 - 1e-9) <= r**2 * np.linalg.eigvalsh(c)[-1] < config.spectrum_bound
    rho = jnp.asarray(rho)
    d = c.shape[0]
    x1 = jr.normal(jr.key(1), prior.shape)
    x2 = jr.normal(jr.key(2), prior.shape)
    # same key, same noise: the difference is the mean map (I - rho^2 C) applied to x1 - x2
    du = auxiliary_draw(jr.key(9), op, y, w, x1, rho, config) - auxiliary_draw(jr.key(9), op, y, w, x2, rho, config)
    expected = (np.eye(d) - float(rho) ** 2 * c) @ np.ravel(x1 - x2)
    np.testing.assert_allclose(np.ravel(du), expected, rtol=1e-9, atol=1e-10)
    # the mean at x: x + rho^2 A^T W (y - A x); the rest is rho L xi with L L^T = I - rho^2 C
    a = np.asarray(operator_matrix(op), np.float64)
    mean = np.ravel(x1) + float(rho) ** 2 * a.T @ (np.ravel(y) - a @ np.ravel(x1)) / sigma**2
    coeffs = chebyshev_coefficients(lambda x: np.sqrt(np.clip(1 - x, 0, None)), 0.0, config.spectrum_bound,
                                    config.chebyshev_degree)
    colour = jax.vmap(lambda e: chebyshev_apply(lambda v: float(rho) ** 2 * jnp.asarray(c) @ v, e, coeffs, 0.0,
                                                config.spectrum_bound))(jnp.eye(d))
    colour = np.asarray(colour).T
    # the covariance is exact to the expansion's stated bound (2.5e-5 at the default degree) ...
    bound = auxiliary_covariance_error(config)
    assert 1e-6 < bound < 3e-5
    np.testing.assert_allclose(colour @ colour.T, np.eye(d) - float(rho) ** 2 * c, atol=bound)
    # ... and a degree too low for that bound misses it here
    low = chebyshev_coefficients(lambda x: np.sqrt(np.clip(1 - x, 0, None)), 0.0, config.spectrum_bound, 4)
    rough = jax.vmap(lambda e: chebyshev_apply(lambda v: float(rho) ** 2 * jnp.asarray(c) @ v, e, low, 0.0,
                                               config.spectrum_bound))(jnp.eye(d))
    rough = np.asarray(rough).T
    assert np.abs(rough @ rough.T - (np.eye(d) - float(rho) ** 2 * c)).max() > bound
    u = auxiliary_draw(jr.key(9), op, y, w, x1, rho, config)
    resid = (np.ravel(u) - mean) / float(rho)  # = L xi: its L-whitened norm is a chi^2_d draw
    z = np.linalg.solve(colour, resid)
    assert 0.5 * d < float(z @ z) < 1.5 * d


@pytest.fixture(scope="module")
def floored():
    """The 16x16 exact problem and its exact posterior under the prior floored at sigma(t_final)."""
    prior, op, y, sigma, _ = gaussian_problem(jr.key(2026))
    config = SplitGibbsConfig(num_moves=3)
    f = floor_sigma(prior, config)
    cov = prior.eigvecs @ jnp.diag(prior.eigvals) @ prior.eigvecs.T + f**2 * jnp.eye(prior.eigvals.size)
    post = GaussianSourcePrior(prior.mean, cov, prior.sde, prior.pixel_scale).posterior(op, y, sigma)
    return prior, op, y, sigma, post, config


def _failures(m):
    return band_failures(m, Z, Z)


def _moved(floored, n=2000):
    prior, op, y, sigma, post, config = floored
    start = post.sample(jr.key(11), n)
    step = eqx.filter_jit(jax.vmap(lambda k, s: split_gibbs_move(k, prior, op, y, sigma, s, config)))
    return start, step(jr.split(jr.key(12), n), start)


def _top_data_mode_ratios(floored, samples, k=4):
    """Sample variance over exact posterior variance along the ``k`` best-measured directions
    (top eigenvectors of ``A^T W A``), where the data step matters most."""
    _, op, _, sigma, post, _ = floored
    c = _dense_normal_matrix(op, sigma)
    top = np.linalg.eigh(c)[1][:, -k:]
    cov = np.asarray(post.cov, np.float64)
    exact = np.einsum("ik,ij,jk->k", top, cov, top)
    proj = (np.asarray(samples, np.float64).reshape(len(samples), -1) - np.ravel(post.mean)) @ top
    return np.mean(proj**2, axis=0) / exact


def test_move_leaves_the_exact_posterior_invariant_and_white_auxiliary_noise_fails(floored, monkeypatch):
    post = floored[4]
    start, after = _moved(floored)
    m = posterior_metrics(post, after, 0.0)
    r = m["ratio_normalised"]
    top = _top_data_mode_ratios(floored, after)
    print(f"\nsplit Gibbs x3: chi2/d {m['chi2_per_dim']:.4f} (+- {m['chi2_sd']:.4f}), offset {m['mean_offset']:.2f}, "
          f"mode variance {float(r.min()):.2f}-{float(r.max()):.2f}, best-measured directions {np.round(top, 2)}")
    assert _failures(m) == []
    band = Z * m["ratio_sd"]
    assert np.all(np.abs(top - 1) < band)
    # it moves: the best-measured modes are redrawn almost independently
    z0, z1 = np.asarray(post.whiten(start)), np.asarray(post.whiten(after))
    corr = np.array([np.corrcoef(z0[:, i], z1[:, i])[0, 1] for i in range(z0.shape[1])])
    print(f"start/moved correlation per mode: min {corr.min():.2f}, median {np.median(corr):.2f}, max {corr.max():.2f}")
    assert np.median(corr) < 0.8 and corr.min() < 0.2

    # control: white auxiliary noise (the sqrt(I - rho^2 A^T W A) correction dropped) over-disperses the
    # best-measured direction (stationary ratio 2 / (2 - coupling) = 1.67 there)
    # control: a denoise in steps of 1.5 in log sigma (2 steps here, where the default takes 48) leaves the bands
    prior, op, y, sigma, _, config = floored
    coarse = (prior, op, y, sigma, post, dataclasses.replace(config, denoise_step_size=1.5))
    _, rough = _moved(coarse)
    m_rough = posterior_metrics(post, rough, 0.0)
    print(f"2-step denoise: chi2/d {m_rough['chi2_per_dim']:.4f}")
    assert _failures(m_rough) != []

    monkeypatch.setattr(sg, "chebyshev_apply", lambda matvec, v, *args: v)
    _, broken = _moved(floored)
    top_b = _top_data_mode_ratios(floored, broken)
    print(f"white auxiliary noise: best-measured directions {np.round(top_b, 2)}")
    assert top_b[-1] > 1 + 2 * band


def test_denoise_steps_follow_the_interval_and_moves_count_their_passes(x64):
    """The denoise takes ``ceil(log(sqrt(floor^2 + rho^2) / floor) / step)`` steps (1 to
    ``denoise_steps``), a fixed count without a step size, and a move reports 2 passes per Heun step."""
    from blindlens.split_gibbs import denoise_step_count

    prior, op, y, sigma, _ = gaussian_problem(jr.key(3), ns=8, ni=12)
    config = SplitGibbsConfig(denoise_step_size=0.25, denoise_steps=40)
    floor = floor_sigma(prior, config)
    for ratio, expected in ((1e-3, 1), (0.5, 1), (1.0, 2), (3.0, 5), (100.0, 19), (1e12, 40)):
        lr = 0.5 * np.log1p(ratio**2)
        assert expected == min(max(int(np.ceil(lr / 0.25)), 1), 40)
        assert int(denoise_step_count(prior, jnp.asarray(ratio * floor), config)) == expected
    fixed = SplitGibbsConfig(denoise_steps=5, denoise_step_size=None)
    assert int(denoise_step_count(prior, jnp.asarray(1e-6), fixed)) == 5
    assert fixed.network_passes_per_move == 10 and SplitGibbsConfig(solver="euler").passes_per_step == 1

    w = inverse_noise_variance(sigma, op.image_shape, op)
    x = jr.normal(jr.key(1), prior.shape)
    rho = coupling_sigma(None, prior, op, w, config)
    for cfg in (config, dataclasses.replace(config, num_moves=2), fixed):
        moved, passes = split_gibbs_move(jr.key(4), prior, op, y, sigma, x, cfg, with_passes=True)
        assert int(passes) == cfg.num_moves * cfg.passes_per_step * int(denoise_step_count(prior, rho, cfg))
        np.testing.assert_array_equal(np.asarray(moved), np.asarray(split_gibbs_move(jr.key(4), prior, op, y, sigma,
                                                                                     x, cfg)))
    with pytest.raises(ValueError, match="denoise_step_size"):
        SplitGibbsConfig(denoise_step_size=0.0)


def test_deterministic_and_chain_layout():
    prior, op, y, sigma, _ = gaussian_problem(jr.key(1), ns=8, ni=12)
    init = prior.sample(jr.key(0), 3)
    config = SplitGibbsConfig(denoise_steps=3)
    a = sample_source_posterior_split_gibbs(jr.key(2), prior, op, y, sigma, init, num_samples=4, burn_in=2, thin=2,
                                            config=config)
    b = sample_source_posterior_split_gibbs(jr.key(2), prior, op, y, sigma, init, num_samples=4, burn_in=2, thin=2,
                                            config=config)
    assert a.shape == (3, 4, 8, 8)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert bool(jnp.all(jnp.isfinite(a)))
    assert config.network_passes_per_move == 6  # Heun: two passes per step
    assert dataclasses.replace(config, solver="euler").network_passes_per_move == 3


def test_bad_inputs_have_clear_errors():
    prior, op, y, sigma, _ = gaussian_problem(jr.key(1), ns=8, ni=12)
    with pytest.raises(ValueError, match="coupling < spectrum_bound"):
        SplitGibbsConfig(coupling=0.95)
    with pytest.raises(ValueError, match="denoise_steps"):
        SplitGibbsConfig(denoise_steps=0)
    with pytest.raises(ValueError, match="solver"):
        SplitGibbsConfig(solver="imex")
    with pytest.raises(ValueError, match="init must have shape"):
        sample_source_posterior_split_gibbs(jr.key(0), prior, op, y, sigma, jnp.zeros((8, 8)), num_samples=2)
    with pytest.raises(ValueError, match="thin"):
        sample_source_posterior_split_gibbs(jr.key(0), prior, op, y, sigma, jnp.zeros((1, 8, 8)), num_samples=2,
                                            thin=0)
    with pytest.raises(ValueError, match="noise_sigma"):
        split_gibbs_move(jr.key(0), prior, op, y, -1.0, jnp.zeros((8, 8)))
