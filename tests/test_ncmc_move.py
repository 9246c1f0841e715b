"""The NCMC lens move (blindlens.inference.ncmc_move): exact on the gold-standard problem.

Chains of the pure core with one NCMC proposal after every sweep (the source carried along the
lens path by split-Gibbs moves) must reproduce the exact theta_E marginal of the Gaussian-source
problem (ESS-based MCSE z-scores of mean and sd below 2.326, KS below its 1% critical value);
the same path accepted with the naive end-point ratio ``p(u_T, s_T) / p(u_0, s_0)`` (which ignores
that the source moved, and so needs the source prior it leaves out) must fail it.
"""

import arviz as az
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from blindlens.gibbs_core import GibbsCore
from blindlens.numpyro_model import joint_model
from blindlens.split_gibbs import SplitGibbsConfig
from test_gibbs_kernel import _mcse_sd, gold  # noqa: F401  (gold: fixture)

from blindlens.inference.ncmc_move import ncmc_lens_move
from blindlens.inference.source_moves import counted_move
from blindlens.testing.gold_problem import Z_99, gold_check


def _setup(problem):
    model = joint_model(problem.lens_model, problem.observation, problem.source_grid)
    core = GibbsCore.default(problem.lens_model, problem.prior, model,
                             split_gibbs=SplitGibbsConfig(denoise_steps=8), num_warmup=100)
    return model, core


def _end_point_move(key, core, u, source, model, inverse_mass, steps, scale):
    """The broken variant: the same path, accepted with the end points' joint likelihood ratio."""
    k_dir, k_acc, k_path = jr.split(key, 3)
    eps = scale * (jnp.linalg.cholesky(inverse_mass) @ jr.normal(k_dir, u.shape, u.dtype))
    s = source
    for k, kk in zip(range(1, steps), jr.split(k_path, steps - 1), strict=True):
        op, data, noise = core._source_inputs(u + (k / steps) * eps, model)
        s, _ = counted_move(core.source_move, kk, op, data, noise, s)
    log_ratio = core.potential(u, source, model) - core.potential(u + eps, s, model)
    accepted = jr.uniform(k_acc, (), u.dtype) < jnp.exp(jnp.minimum(log_ratio, 0.0))
    return jnp.where(accepted, u + eps, u), jnp.where(accepted, s, source)


def _theta_draws(problem, key, move, steps, scale, num_samples=300, chains=2):
    model, core = _setup(problem)
    states = [core.init(k, model, problem.truth, None) for k in jr.split(jr.fold_in(key, 1), chains)]
    state = jax.tree.map(lambda *x: jnp.stack(x), *states)

    def one(k, s, warmup):
        s, _ = core.sweep(k, s, model, warmup=warmup, descend=False)
        if move == "ncmc":
            r = ncmc_lens_move(jr.fold_in(k, 7), core, s.lens, s.source, model, s.inverse_mass, steps, scale)
            return s._replace(lens=r.lens, source=r.source), r.accept_prob
        u, src = _end_point_move(jr.fold_in(k, 7), core, s.lens, s.source, model, s.inverse_mass, steps, scale)
        return s._replace(lens=u, source=src), jnp.zeros(())

    step = {w: jax.jit(lambda k, s, w=w: jax.vmap(lambda kk, ss: one(kk, ss, w))(jr.split(k, chains), s))
            for w in (True, False)}
    for i in range(core.num_warmup):
        state, _ = step[True](jr.fold_in(key, i), state)
    theta, accept = [], []
    for i in range(num_samples):
        state, a = step[False](jr.fold_in(key, 10**6 + i), state)
        theta.append(np.asarray(jax.vmap(core.lens_values)(state.lens)["theta_E"]))
        accept.append(np.asarray(a))
    return np.stack(theta, 1), float(np.mean(accept))


def test_ncmc_keeps_the_exact_marginal_and_the_end_point_ratio_does_not(gold):  # noqa: F811
    problem, grid, cdf, mean, sd = gold
    theta, accept = _theta_draws(problem, jr.key(11), "ncmc", steps=4, scale=3.0)
    ess = float(az.ess(theta))
    z_mean, z_sd, ks, ks_crit = gold_check(theta, ess, _mcse_sd(theta), grid, cdf, mean, sd)
    print(f"NCMC T=4 c=3: mean {theta.mean():.5f} vs {mean:.5f}, sd {theta.std():.5f} vs {sd:.5f}, ESS {ess:.0f}, "
          f"z_mean {z_mean:.2f}, z_sd {z_sd:.2f}, KS {ks:.3f} (crit {ks_crit:.3f}), acceptance {accept:.2f}")
    assert 0.1 < accept < 0.9 and ess > 60
    assert abs(z_mean) < Z_99 and abs(z_sd) < Z_99 and ks < ks_crit

    # the broken ratio on a longer path (6 steps of 4 metric sds: the source moves more), which the
    # exact move also passes (z_mean -1.17, z_sd -0.09, KS 0.054 against 0.183 with this key)
    theta_b, _ = _theta_draws(problem, jr.key(11), "end-point", steps=6, scale=4.0)
    ess_b = float(az.ess(theta_b))
    z_mean_b, z_sd_b, ks_b, ks_crit_b = gold_check(theta_b, ess_b, _mcse_sd(theta_b), grid, cdf, mean, sd)
    print(f"end-point ratio: mean {theta_b.mean():.5f}, sd {theta_b.std():.5f}, z_mean {z_mean_b:.2f}, "
          f"z_sd {z_sd_b:.2f}, KS {ks_b:.3f} (crit {ks_crit_b:.3f})")
    assert abs(z_mean_b) > Z_99 or abs(z_sd_b) > Z_99 or ks_b > ks_crit_b


def test_ncmc_with_one_step_is_metropolis_at_a_fixed_source_and_bad_settings_are_refused(gold):  # noqa: F811
    problem = gold[0]
    model, core = _setup(problem)
    state = core.init(jr.key(0), model, problem.truth, None)
    r = ncmc_lens_move(jr.key(3), core, state.lens, state.source, model, state.inverse_mass, 1, 2.0)
    # T = 1: no source move, the work is the lens potential's drop at the current source
    np.testing.assert_array_equal(np.asarray(r.source), np.asarray(state.source))
    assert int(r.num_score_evals) == 0
    eps = 2.0 * (jnp.linalg.cholesky(state.inverse_mass) @ jr.normal(jr.split(jr.key(3), 3)[0], state.lens.shape,
                                                                      state.lens.dtype))
    expected = core.potential(state.lens, state.source, model) - core.potential(state.lens + eps, state.source, model)
    np.testing.assert_allclose(float(r.log_work), float(expected), rtol=1e-10, atol=1e-10)
    # T = 3 spends two source moves' passes
    r3 = ncmc_lens_move(jr.key(3), core, state.lens, state.source, model, state.inverse_mass, 3, 2.0)
    assert int(r3.num_score_evals) > 0
    with pytest.raises(ValueError, match="steps >= 1"):
        ncmc_lens_move(jr.key(3), core, state.lens, state.source, model, state.inverse_mass, 0, 2.0)
