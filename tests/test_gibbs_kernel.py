"""Tests of blind joint inference: the BlindLensGibbs NumPyro kernel and continuous-time GibbsDDRM.

The gold standard (data-and-validation.md §B.2, V-12): with a Gaussian source prior the source
marginalises analytically, p(theta | y) ∝ p(theta) N(y; 0, A S A^T + sigma^2 I). The Gibbs kernel
run with the exact Gaussian likelihood score must reproduce that marginal (ESS-based MCSE
z-scores of mean and sd below Phi^{-1}(0.99) = 2.326, KS distance below its 1% critical value
at the effective sample size); tempering the likelihood by 2 must fail the same check.
"""

import pickle

import arviz as az
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from blindlens.testing.gold_problem import (
    Z_99,
    LowRankExactGuidance,
    Problem,
    exact_theta_e_marginal,
    mcse_sd,
)
from blindlens.testing.gold_problem import gold_check as _gold_check
from numpyro.infer import MCMC
from numpyro.infer.gibbs import GIBBS_SITES_KWARG, conditioned, with_conditioning
from numpyro.infer.util import potential_energy

from blindlens.gibbs_core import GibbsCore
from blindlens.gibbs_kernel import (
    BlindLensGibbs,
    GibbsDDRMConfig,
    LensNUTS,
    SourceBlock,
    auto_refresh_sigma,
    lens_unconstrained,
    sample_gibbsddrm,
)
from blindlens.likelihood_score import ExactGaussianLikelihoodScore
from blindlens.numpyro_model import lens_from_values
from blindlens.observation import Observation
from blindlens.source_posterior import SourceSamplerConfig, refresh_steps
from blindlens.split_gibbs import SplitGibbsConfig

ARVIZ_STATS = {"diverging", "lp", "acceptance_rate", "step_size", "n_steps", "tree_depth"}


@pytest.fixture(scope="module")
def gold():
    """The 16x16 GP-source problem with theta_E free, and its exact marginal on a fine grid."""
    problem = Problem(free=("theta_E",))
    return (problem, *exact_theta_e_marginal(problem))


def _exact_kernel(problem, observation=None, steps=40, refresh_sigma="auto", tries=4, **kwargs):
    exact = LowRankExactGuidance(basis=problem.basis)
    return BlindLensGibbs(
        problem.lens_model,
        problem.observation if observation is None else observation,
        problem.prior,
        source_config=SourceSamplerConfig(guidance=exact, num_steps=steps),
        warm_start=GibbsDDRMConfig(guidance=exact, num_steps=steps),
        source_grid=problem.source_grid,
        source_refresh_sigma=refresh_sigma,
        warm_start_tries=tries,
        **kwargs,
    )


def _mcse_sd(draws):
    """MCSE of the sample sd, with ArviZ's bulk ESS of the squared deviations."""
    return mcse_sd(draws, az.ess)


def _run_gold(problem, observation, key, grid, cdf, mean, sd, refresh_sigma="auto", **kwargs):
    kernel = _exact_kernel(problem, observation, refresh_sigma=refresh_sigma, **kwargs)
    mcmc = MCMC(kernel, num_warmup=100, num_samples=250, num_chains=2, chain_method=jax.vmap, progress_bar=False)
    mcmc.run(key)
    idata = az.from_numpyro(mcmc, log_likelihood=False)
    ess = float(az.ess(idata, var_names=["theta_E"])["theta_E"])
    mcse_sd = _mcse_sd(idata.posterior["theta_E"].values)
    return idata, _gold_check(idata.posterior["theta_E"].values, ess, mcse_sd, grid, cdf, mean, sd), ess


def test_gold_standard_gibbs_matches_exact_marginal_and_tempered_fails(gold):
    problem, grid, cdf, mean, sd = gold
    idata, (z_mean, z_sd, ks, ks_crit), ess = _run_gold(problem, None, jr.key(7), grid, cdf, mean, sd)
    print(f"gold (refresh 0.3): mean {float(idata.posterior.theta_E.mean()):.5f} vs {mean:.5f}, sd "
          f"{float(idata.posterior.theta_E.std()):.5f} vs {sd:.5f}, ESS {ess:.0f}, z_mean {z_mean:.2f}, "
          f"z_sd {z_sd:.2f}, KS {ks:.3f} (crit {ks_crit:.3f})")
    assert ess > 60
    assert abs(z_mean) < Z_99 and abs(z_sd) < Z_99 and ks < ks_crit
    assert ARVIZ_STATS <= set(idata.sample_stats.data_vars)

    # broken control: likelihood tempered by 2 (noise / sqrt 2) in both blocks must fail
    obs = problem.observation
    tempered = Observation(obs.image, problem.noise / np.sqrt(2.0), obs.psf, problem.image_grid.pixel_scale)
    _, (z_mean_b, z_sd_b, ks_b, ks_crit_b), _ = _run_gold(problem, tempered, jr.key(7), grid, cdf, mean, sd)
    print(f"tempered: z_mean {z_mean_b:.2f}, z_sd {z_sd_b:.2f}, KS {ks_b:.3f} (crit {ks_crit_b:.3f})")
    assert abs(z_mean_b) > Z_99 or abs(z_sd_b) > Z_99 or ks_b > ks_crit_b


def test_gold_standard_with_full_source_draws_each_sweep(gold):
    """The default kernel refreshes the source partially (sigma_r = 3 x noise = 0.3 here, 24 of 40
    steps); a full reverse trajectory every sweep must match the exact marginal as well."""
    problem, grid, cdf, mean, sd = gold
    assert _exact_kernel(problem).source_refresh_sigma == pytest.approx(0.3)
    idata, (z_mean, z_sd, ks, ks_crit), ess = _run_gold(problem, None, jr.key(7), grid, cdf, mean, sd, refresh_sigma=None)
    evals = int(idata.sample_stats["num_score_evals"].values[0, -1])
    print(f"full draws: mean {float(idata.posterior.theta_E.mean()):.5f} vs {mean:.5f}, sd "
          f"{float(idata.posterior.theta_E.std()):.5f} vs {sd:.5f}, ESS {ess:.0f}, z_mean {z_mean:.2f}, "
          f"z_sd {z_sd:.2f}, KS {ks:.3f} (crit {ks_crit:.3f}), score evals per chain {evals}")
    assert ess > 60
    assert abs(z_mean) < Z_99 and abs(z_sd) < Z_99 and ks < ks_crit


def _split_gibbs_kernel(problem, config):
    exact = LowRankExactGuidance(basis=problem.basis)
    return BlindLensGibbs(
        problem.lens_model, problem.observation, problem.prior,
        source_config=SourceSamplerConfig(guidance=exact, num_steps=40),
        warm_start=GibbsDDRMConfig(guidance=exact, num_steps=40), source_grid=problem.source_grid,
        split_gibbs=config,
    )


def test_split_gibbs_source_move_is_wired_and_refuses_a_refresh_level(gold):
    problem, *_ = gold
    kernel = _split_gibbs_kernel(problem, SplitGibbsConfig(num_moves=2, denoise_steps=3))
    assert kernel.source_refresh_sigma is None
    assert kernel.core.source_move.num_score_evals == 2 * 3 * 2  # moves x steps x Heun's two passes
    mcmc = MCMC(kernel, num_warmup=3, num_samples=4, num_chains=1, progress_bar=False)
    mcmc.run(jr.key(1))
    stats = mcmc.get_extra_fields()
    assert np.all(np.isfinite(np.asarray(mcmc.get_samples()["theta_E"])))
    assert int(np.asarray(stats["num_score_evals"])[-1]) == 7 * 12  # 7 sweeps of moves, counted per sweep
    with pytest.raises(ValueError, match="split_gibbs"):
        BlindLensGibbs(problem.lens_model, problem.observation, problem.prior, source_grid=problem.source_grid,
                       source_refresh_sigma=0.3, split_gibbs=SplitGibbsConfig())


class _Constant:
    """A fake source step: fills the source with a constant (cost 5 per call)."""

    num_score_evals = 5

    def __call__(self, key, operator, data, noise):
        return jnp.full(operator.source_shape, 7.0)


class _PlusOne:
    """A fake sweep move: adds one to the current source (cost 2 per call)."""

    num_score_evals = 2

    def __call__(self, key, operator, data, noise, current):
        return current + 1.0


def empty_source_threshold(problem, joint):
    """The descent threshold ``k`` at which an empty source at theta_E = 1 just misfits: ``(chi^2/N - 1) / sqrt(2/N)``."""
    zeros = jnp.zeros(problem.source_grid.shape)
    n = float(np.sum(np.asarray(joint.mask)))
    chi2n = float(joint.residual_chi2(lens_from_values(problem.lens_model, {"theta_E": 1.0}), zeros)) / n
    boundary = (chi2n - 1.0) / np.sqrt(2.0 / n)
    assert boundary > 10  # an empty source misfits the arcs
    return boundary


def test_warmup_descent_moves_the_first_half_of_warmup_then_hands_over(gold):
    problem, *_ = gold
    joint = _exact_kernel(problem).joint_model
    block = SourceBlock(joint, _Constant(), _PlusOne(), descent="draw", descent_fraction=0.5)
    assert block.descent_sweeps(5) == 2 and block.descent_sweeps(0) == 0
    state = block.init(jr.key(0), 5, {"source": jnp.zeros(problem.source_grid.shape)}, (), {})
    kwargs = {GIBBS_SITES_KWARG: {"theta_E": jnp.asarray(1.0)}}
    seen, left = [], []
    for _ in range(5):
        state = block.sample(state, (), kwargs)
        seen.append(float(state.z["source"][0, 0]))
        left.append(int(state.descent_left))
    assert seen == [7.0, 7.0, 8.0, 9.0, 10.0]  # two fresh draws, then the sweep's move from the last one
    assert left == [1, 0, 0, 0, 0]
    assert int(state.num_score_evals) == 2 * 5 + 3 * 2
    plain = SourceBlock(joint, _Constant(), _PlusOne())
    state = plain.init(jr.key(0), 5, {"source": jnp.zeros(problem.source_grid.shape)}, (), {})
    assert float(plain.sample(state, (), kwargs).z["source"][0, 0]) == 1.0
    with pytest.raises(ValueError, match="descent_fraction"):
        SourceBlock(joint, _Constant(), _PlusOne(), descent="draw", descent_fraction=1.5)
    # with a threshold, only a chain whose start misfits by more than k sd of chi^2/N descends
    zeros = jnp.zeros(problem.source_grid.shape)
    boundary = empty_source_threshold(problem, joint)
    for k, descends in ((0.99 * boundary, True), (1.01 * boundary, False)):
        block = SourceBlock(joint, _Constant(), _PlusOne(), descent="draw", descent_threshold=k)
        state = block.init(jr.key(0), 4, {"source": zeros}, (), kwargs)
        assert int(state.descent_left) == (2 if descends else 0)
        assert float(block.sample(state, (), kwargs).z["source"][0, 0]) == (7.0 if descends else 1.0)
        # the core (what BlindLensGibbs runs) decides the same per chain, at init
        core = GibbsCore(problem.lens_model, _Constant(), _PlusOne(), num_warmup=4, descent="draw", descent_threshold=k)
        start = core.init(jr.key(0), joint, {"theta_E": 1.0}, zeros)
        assert bool(start.descends) == descends
        assert float(core.sweep(jr.key(1), start, joint)[0].source[0, 0]) == (7.0 if descends else 1.0)
        assert float(core.sweep(jr.key(1), start, joint, warmup=True, descend=True)[0].source[0, 0]) == (
            7.0 if descends else 1.0)


class _Fixed:
    """A fake source step: returns a given source (cost 5 per call)."""

    num_score_evals = 5

    def __init__(self, source):
        self.source = source

    def __call__(self, key, operator, data, noise):
        return self.source


def test_a_descending_chain_hands_over_once_its_source_fits_and_not_before(gold):
    problem, *_ = gold
    joint = _exact_kernel(problem).joint_model
    zeros = jnp.zeros(problem.source_grid.shape)
    truth = {"theta_E": jnp.asarray(problem.truth["theta_E"])}
    kwargs = {GIBBS_SITES_KWARG: truth}
    start = 0.5 * empty_source_threshold(problem, joint)  # the empty start misfits by more: it descends
    k = 5.0  # the exit: the true source fits within 5 sd of chi^2/N; an empty or constant source is far outside
    n = float(np.sum(np.asarray(joint.mask)))
    lens = lens_from_values(problem.lens_model, truth)
    assert float(joint.residual_chi2(lens, problem.source)) / n < 1.0 + 2.0 * np.sqrt(2.0 / n)
    for draw, fits in ((_Fixed(problem.source), True), (_Constant(), False)):
        block = SourceBlock(joint, draw, _PlusOne(), descent="draw", descent_threshold=start, descent_exit=k)
        state = block.init(jr.key(0), 8, {"source": zeros}, (), kwargs)
        assert int(state.descent_left) == 4  # four descent sweeps planned
        state = block.sample(state, (), kwargs)
        assert int(state.descent_left) == (0 if fits else 3)
        second = block.sample(state, (), kwargs).z["source"]
        first = problem.source if fits else jnp.full(problem.source_grid.shape, 7.0)
        # fits: the sweep's move from the descent's source; misfits: another descent draw
        np.testing.assert_allclose(np.asarray(second), np.asarray(first + 1.0 if fits else first))
        # the core (what BlindLensGibbs runs) hands over the same way, judged after its lens move
        core = GibbsCore(problem.lens_model, draw, _PlusOne(), num_warmup=8, descent="draw",
                         descent_threshold=start, descent_exit=k)
        state = core.init(jr.key(0), joint, truth, zeros)
        assert bool(state.descends)
        state, info = core.sweep(jr.key(1), state, joint)
        assert bool(state.descends) == (not fits)
        assert (float(info.chi2) / n < 1.0 + k * np.sqrt(2.0 / n)) == fits
        state, info = core.sweep(jr.key(2), state, joint)
        np.testing.assert_allclose(np.asarray(state.source), np.asarray(first + 1.0 if fits else first))
        assert int(info.num_score_evals) == (5 + 2 if fits else 5 + 5)
        # a batch's static descend=True with an exit level (and no start threshold) hands over alike
        core = GibbsCore(problem.lens_model, draw, _PlusOne(), num_warmup=8, descent="draw", descent_exit=k)
        state = core.init(jr.key(0), joint, truth, zeros)
        state = core.sweep(jr.key(1), state, joint, warmup=True, descend=True)[0]
        state = core.sweep(jr.key(2), state, joint, warmup=True, descend=True)[0]
        np.testing.assert_allclose(np.asarray(state.source), np.asarray(first + 1.0 if fits else first))
    # without an exit level a fitting chain descends on (all of its descent sweeps)
    block = SourceBlock(joint, _Fixed(problem.source), _PlusOne(), descent="draw", descent_threshold=start)
    state = block.sample(block.init(jr.key(0), 8, {"source": zeros}, (), kwargs), (), kwargs)
    assert int(state.descent_left) == 3
    np.testing.assert_allclose(np.asarray(block.sample(state, (), kwargs).z["source"]), np.asarray(problem.source))
    core = GibbsCore(problem.lens_model, _Fixed(problem.source), _PlusOne(), num_warmup=8, descent="draw",
                     descent_threshold=start)
    state = core.sweep(jr.key(1), core.init(jr.key(0), joint, truth, zeros), joint)[0]
    assert bool(state.descends)
    with pytest.raises(ValueError, match="descent_exit"):
        GibbsCore(problem.lens_model, _Constant(), _PlusOne(), descent="draw", descent_exit=-1.0)
    with pytest.raises(ValueError, match="descent_exit"):
        SourceBlock(joint, _Constant(), _PlusOne(), descent="draw", descent_exit=-1.0)


def test_warmup_source_move_runs_in_a_split_gibbs_kernel_and_is_refused_without_a_sweep_move(gold):
    problem, *_ = gold
    exact = LowRankExactGuidance(basis=problem.basis)
    kernel = BlindLensGibbs(
        problem.lens_model, problem.observation, problem.prior,
        source_config=SourceSamplerConfig(guidance=exact, num_steps=40),
        warm_start=GibbsDDRMConfig(guidance=exact, num_steps=40), source_grid=problem.source_grid,
        split_gibbs=SplitGibbsConfig(denoise_steps=3), warmup_source_move="draw",
    )
    mcmc = MCMC(kernel, num_warmup=4, num_samples=3, num_chains=1, progress_bar=False)
    mcmc.run(jr.key(1))
    evals = np.asarray(mcmc.get_extra_fields()["num_score_evals"])
    # 2 warm-up sweeps of full draws (40 steps + denoise), then 5 split-Gibbs moves of 3 Heun steps
    assert int(evals[-1]) == 2 * 41 + 5 * 6
    assert np.all(np.diff(evals) == 6)  # every kept sweep is a split-Gibbs move
    with pytest.raises(ValueError, match="warmup_source_move"):
        BlindLensGibbs(problem.lens_model, problem.observation, problem.prior, source_grid=problem.source_grid,
                       source_refresh_sigma=None, warmup_source_move="draw")
    with pytest.raises(ValueError, match="warmup_source_move"):
        BlindLensGibbs(problem.lens_model, problem.observation, problem.prior, source_grid=problem.source_grid,
                       split_gibbs=SplitGibbsConfig(), warmup_source_move="sometimes")


def test_auto_refresh_level_follows_the_noise_and_falls_back_to_full_draws(gold):
    problem = gold[0]
    obs = problem.observation
    kernel = _exact_kernel(problem)
    assert auto_refresh_sigma(kernel.joint_model, problem.prior) == pytest.approx(3 * problem.noise)
    # noise so large that 3 sigma_n exceeds sigma_max / 4 of the prior: full draws
    loud = Observation(obs.image, 2.0, obs.psf, problem.image_grid.pixel_scale)
    assert _exact_kernel(problem, loud).source_refresh_sigma is None
    with pytest.raises(ValueError, match="source_refresh_sigma"):
        _exact_kernel(problem, refresh_sigma="sometimes")


def test_gold_standard_with_the_fixed_length_hmc_lens_move(gold):
    """``lens_move="hmc"`` (the batch move: two leapfrog steps, jittered step size) in the NumPyro
    kernel matches the exact marginal too; the same move with the likelihood tempered by 2 fails."""
    problem, grid, cdf, mean, sd = gold
    idata, (z_mean, z_sd, ks, ks_crit), ess = _run_gold(problem, None, jr.key(7), grid, cdf, mean, sd, lens_move="hmc")
    print(f"hmc lens move: ESS {ess:.0f}, z_mean {z_mean:.2f}, z_sd {z_sd:.2f}, KS {ks:.3f} (crit {ks_crit:.3f})")
    assert ess > 60 and abs(z_mean) < Z_99 and abs(z_sd) < Z_99 and ks < ks_crit
    assert np.all(idata.sample_stats["n_steps"].values == 2)
    obs = problem.observation
    tempered = Observation(obs.image, problem.noise / np.sqrt(2.0), obs.psf, problem.image_grid.pixel_scale)
    _, (z_mean_b, z_sd_b, ks_b, ks_crit_b), _ = _run_gold(problem, tempered, jr.key(7), grid, cdf, mean, sd,
                                                          lens_move="hmc")
    assert abs(z_mean_b) > Z_99 or abs(z_sd_b) > Z_99 or ks_b > ks_crit_b


def test_lens_nuts_metric_is_the_inverse_hessian_of_numpyros_own_potential(x64):
    """The kernel's lens potential and curvature metric (the core's) and LensNUTS's must be built
    from exactly the potential NumPyro would sample (same bijections, Jacobians and likelihood):
    compare with ``numpyro.infer.util.potential_energy`` of the conditioned joint model and its
    Hessian (float64, exact to rounding)."""
    problem = Problem(free=("theta_E", "center_x"))
    kernel = _exact_kernel(problem)
    lens_nuts = LensNUTS(kernel.joint_model)
    source = jnp.asarray(problem.source, jnp.float64)
    z = lens_unconstrained(problem.lens_model, {"theta_E": 0.79, "center_x": 0.02})
    z = {k: jnp.asarray(v, jnp.float64) for k, v in z.items()}
    kwargs = with_conditioning({}, {"source": source})
    model = conditioned(kernel.joint_model)

    def numpyro_potential(flat):
        return potential_energy(model, (), kwargs, {"center_x": flat[0], "theta_E": flat[1]})

    flat = jnp.stack([z["center_x"], z["theta_E"]])  # NumPyro orders sites by name
    hess = jax.hessian(numpyro_potential)(flat)
    assert bool(jnp.all(jnp.linalg.eigvalsh(hess) > 1e-2))  # convex here: SoftAbs is the identity map
    ours = lens_nuts.curvature_inverse_mass(z, source)
    np.testing.assert_allclose(ours, jnp.linalg.inv(hess), rtol=1e-8, atol=0)
    core = kernel.core.curvature_inverse_mass(flat, source, kernel.joint_model)  # the core's flat order is by name
    np.testing.assert_allclose(core, jnp.linalg.inv(hess), rtol=1e-8, atol=0)
    np.testing.assert_allclose(float(kernel.core.potential(flat, source, kernel.joint_model)),
                               float(numpyro_potential(flat)), rtol=1e-12)
    # a deliberately wrong potential (NumPyro's scaled by 1/2) is far from it
    tempered = jnp.linalg.inv(jax.hessian(lambda f: 0.5 * numpyro_potential(f))(flat))
    assert not np.allclose(ours, tempered, rtol=0.1)


def test_lens_nuts_freezes_its_metric_after_warmup_and_refuses_conflicting_options(gold):
    problem = gold[0]
    kernel = _exact_kernel(problem, steps=20)
    mcmc = MCMC(kernel, num_warmup=6, num_samples=5, num_chains=1, progress_bar=False)
    mcmc.run(jr.key(3), extra_fields=("adapt_state.inverse_mass_matrix", "adapt_state.step_size"))
    inv = mcmc.get_extra_fields()["adapt_state.inverse_mass_matrix"]
    steps = np.asarray(mcmc.get_extra_fields()["adapt_state.step_size"])
    assert inv.shape == (5, 1, 1)
    assert np.all(np.asarray(inv) == np.asarray(inv)[0]) and np.all(steps == steps[0])  # frozen while sampling
    assert 0 < float(inv[0, 0, 0]) < 1e-4  # the conditional variance of theta_E in unconstrained units, not 1
    with pytest.raises(ValueError, match="curvature_metric=False"):
        LensNUTS(kernel.joint_model, adapt_mass_matrix=True)
    plain = LensNUTS(kernel.joint_model, curvature_metric=False)
    assert plain._adapt_mass_matrix


def test_kernel_output_structure_and_chain_methods(gold):
    problem = gold[0]
    kernel = _exact_kernel(problem, steps=20)
    for method in ("sequential", jax.vmap):
        mcmc = MCMC(kernel, num_warmup=5, num_samples=6, num_chains=2, chain_method=method, progress_bar=False)
        mcmc.run(jr.key(1))
        idata = az.from_numpyro(mcmc, log_likelihood=False)
        assert idata.posterior["theta_E"].shape == (2, 6)
        assert idata.posterior["source"].dims == ("chain", "draw", "source_y", "source_x")
        assert ARVIZ_STATS <= set(idata.sample_stats.data_vars)
        assert np.all(np.isfinite(idata.sample_stats["lp"].values))
        # the two chains are different chains
        assert not np.allclose(idata.posterior["theta_E"].values[0], idata.posterior["theta_E"].values[1])
    # "parallel" falls back to sequential on one device, with NumPyro's warning
    with pytest.warns(UserWarning, match="devices"):
        mcmc = MCMC(kernel, num_warmup=2, num_samples=2, num_chains=2, chain_method="parallel", progress_bar=False)
    mcmc.run(jr.key(2))
    assert mcmc.get_samples(group_by_chain=True)["theta_E"].shape == (2, 2)
    # "vectorized" (which NumPyro's Gibbs refused) runs the chains in one program
    mcmc = MCMC(kernel, num_warmup=2, num_samples=2, num_chains=2, chain_method="vectorized", progress_bar=False)
    mcmc.run(jr.key(3))
    assert mcmc.get_samples(group_by_chain=True)["source"].shape == (2, 2, *problem.source_grid.shape)


def test_resume_from_post_warmup_state(gold, tmp_path):
    problem = gold[0]
    kernel = _exact_kernel(problem, steps=20)
    mcmc = MCMC(kernel, num_warmup=30, num_samples=5, progress_bar=False)
    mcmc.warmup(jr.key(4))
    state = jax.device_get(mcmc.post_warmup_state)
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps(state))
    adapted = float(state.adapt_state.step_size)
    mcmc.run(jr.key(5))
    first = mcmc.get_samples()["theta_E"]
    # a fresh kernel (as in a new process) continues from the pickled state, adaptation kept,
    # and the warm start is skipped because init_params come from the state
    loaded = pickle.loads(path.read_bytes())
    fresh = MCMC(_exact_kernel(problem, steps=20), num_warmup=0, num_samples=5, progress_bar=False)
    fresh.post_warmup_state = loaded
    fresh.run(jr.key(5), init_params=loaded.z)
    second = fresh.get_samples()["theta_E"]
    np.testing.assert_allclose(np.asarray(second), np.asarray(first), rtol=1e-5)
    assert float(fresh.last_state.adapt_state.step_size) == pytest.approx(adapted)
    # per sweep: the partial refresh from sigma_r = 0.3 (its share of the 20 steps) + the final denoise
    per_sweep = refresh_steps(problem.prior, SourceSamplerConfig(num_steps=20), 0.3)[1] + 1
    assert per_sweep == 13
    assert int(fresh.last_state.num_score_evals) == int(loaded.num_score_evals) + 5 * per_sweep


def test_best_of_k_warm_start_finds_the_mode_from_prior_draws_where_single_tries_fail(gold):
    """Cold starts from lens prior draws: a single continuous-time trajectory ends at a wrong,
    self-consistent lens (the prior bound 1.2, or 0.5) for 5 of 16 keys (measured), so 8 chains with
    one try each fail somewhere; keeping the best of 4 tries by residual chi^2 (wrong lenses fit
    at chi^2/N ~ 19 here) must start all 8 chains in the posterior (failure probability per chain
    about (5/16)^4 = 1 %). The selection itself is checked exactly: the returned try is the argmin
    of chi^2 over the tries drawn with the same keys."""
    problem, _, _, mean, sd = gold
    keys = jr.split(jr.key(21), 8)
    best = _exact_kernel(problem, steps=60)
    assert best.warm_start_tries == 4
    single = _exact_kernel(problem, steps=60)
    single.warm_start_tries = 1
    # every try of every chain, with the keys warm_start_draw splits internally
    tries = jax.lax.map(lambda k: jax.lax.map(single.warm_start_draw, jr.split(k, 4)), keys)
    jm = best.joint_model

    def chi2(theta_e, source):
        return -2 * jm.log_likelihood(lens_from_values(jm.lens_model, {"theta_E": theta_e}), source)

    fit = np.asarray(jax.vmap(jax.vmap(chi2))(tries.lens["theta_E"], tries.source))
    theta_all = np.asarray(tries.lens["theta_E"])
    chosen = theta_all[np.arange(8), np.argmin(fit, axis=1)]
    print("first tries:", theta_all[:, 0].round(4), "best of 4:", chosen.round(4), "exact", round(mean, 5))
    assert np.any(np.abs(theta_all[:, 0] - mean) > 6 * sd)  # control: single tries fail somewhere
    assert np.all(np.abs(chosen - mean) < 6 * sd)
    # the kernel's own selection is that argmin
    draw = best.warm_start_draw(keys[0])
    np.testing.assert_allclose(float(draw.lens["theta_E"]), chosen[0], rtol=1e-5)
    with pytest.raises(ValueError, match="warm_start_tries"):
        BlindLensGibbs(problem.lens_model, problem.observation, problem.prior, warm_start_tries=0)


def test_far_start_is_rescued_by_the_prior_draw_tries(gold):
    """From theta_E = 1.15 (truth 0.80, posterior sd 0.001) every continuous-time trajectory ends at
    the prior bound 1.2 (the control below: lens and Tweedie source co-adapt to a wrong fixed
    point). ``warm_start_draw(init_lens=...)`` starts only its first try there and the rest from prior
    draws; the chi^2 selection then discards the far start. A prior-draw try reaches the mode only
    from within ~0.1 of it (7 of 16 measured), so the kernel here makes 8 tries: 7 prior tries all
    miss with probability ~0.56^7 = 2 % per draw (4 tries, the default, miss ~20 % of the time)."""
    problem, _, _, mean, sd = gold
    kernel = _exact_kernel(problem, steps=60, tries=8)
    far = {"theta_E": 1.15}
    draws = jax.vmap(lambda k: kernel.warm_start_draw(k, init_lens=far))(jr.split(jr.key(9), 4))
    theta = np.asarray(draws.lens["theta_E"])
    control = jax.vmap(lambda k: sample_gibbsddrm(k, kernel.joint_model, problem.prior, kernel.warm_start, far))(
        jr.split(jr.key(9), 4)
    )
    theta_far = np.asarray(control.lens["theta_E"])
    print("best of 1 far + 7 prior tries:", theta, "all tries from the far start:", theta_far, "exact", mean, sd)
    assert np.all(np.abs(theta_far - mean) > 6 * sd)  # repeating the far start cannot help
    assert np.all(np.abs(theta - mean) < 6 * sd)
    assert draws.source.shape == (4, 16, 16)
    assert np.all(np.asarray(draws.accept_rate) > 0.2)
    # a good start is kept: from the exact mean the selected draw sits at the mode too
    good = kernel.warm_start_draw(jr.key(10), init_lens={"theta_E": mean})
    assert abs(float(good.lens["theta_E"]) - mean) < 6 * sd
    for k in (kernel, _exact_kernel(problem, tries=1)):  # the best-of-k and the single-trajectory path
        with pytest.raises(ValueError, match="init_lens lacks"):
            k.warm_start_draw(jr.key(0), init_lens={})
    u = lens_unconstrained(problem.lens_model, far)
    assert float(jax.nn.sigmoid(u["theta_E"]) * 0.7 + 0.5) == pytest.approx(1.15, rel=1e-5)


def test_bad_inputs_have_clear_errors(gold):
    problem = gold[0]
    with pytest.raises(ValueError, match="AbstractSourcePrior"):
        BlindLensGibbs(problem.lens_model, problem.observation, prior="default")
    with pytest.raises(ValueError, match="GibbsDDRMConfig.num_steps"):
        GibbsDDRMConfig(num_steps=0)
    two = Problem(source_shape=(8, 8), image_shape=(10, 10), rank=20, free=("theta_E", "center_x"))
    kernel = _exact_kernel(two, steps=5)
    with pytest.raises(ValueError, match="some lens sites"):
        kernel.init(jr.key(0), 1, {"theta_E": 0.0}, (), {})


def test_gibbsddrm_is_vmappable_and_deterministic(gold):
    problem = gold[0]
    kernel = _exact_kernel(problem, steps=30)
    config = GibbsDDRMConfig(guidance=LowRankExactGuidance(basis=problem.basis), num_steps=30, final_lens_steps=5)
    f = jax.jit(lambda k: sample_gibbsddrm(k, kernel.joint_model, problem.prior, config))
    a, b = f(jr.key(3)), f(jr.key(3))
    np.testing.assert_array_equal(np.asarray(a.source), np.asarray(b.source))
    assert float(a.lens["theta_E"]) == float(b.lens["theta_E"])


def test_gibbsddrm_with_default_cla_guidance_is_finite_at_few_steps(gold):
    """The default CLA guidance runs through the IMEX step: finite at 20 intervals, where an explicit
    Euler step of CLA diverges on this lensing problem (tests/test_source_posterior.py)."""
    problem = gold[0]
    kernel = _exact_kernel(problem, steps=20)
    config = GibbsDDRMConfig(num_steps=20, final_lens_steps=2)
    draws = jax.jit(jax.vmap(lambda k: sample_gibbsddrm(k, kernel.joint_model, problem.prior, config)))(
        jr.split(jr.key(4), 2)
    )
    assert np.all(np.isfinite(np.asarray(draws.source)))
    assert np.all(np.isfinite(np.asarray(draws.lens["theta_E"])))
    scale = float(jnp.max(jnp.abs(problem.observation.image)))
    assert float(jnp.max(jnp.abs(draws.source))) < 100 * scale  # no blow-up


def test_low_rank_exact_guidance_equals_the_library_exact_score(gold):
    """The test's fast exact guidance is the library's ExactGaussianLikelihoodScore, computed cheaper."""
    problem = gold[0]
    from blindlens.lens_models import SIS
    from blindlens.lensing_operator import LensingOperator

    op = LensingOperator(SIS(theta_E=0.82), problem.image_grid, problem.source_grid, psf=problem.psf)
    y, noise = problem.observation.image, problem.noise
    fast = LowRankExactGuidance(basis=problem.basis)
    ref = ExactGaussianLikelihoodScore()
    p_fast = fast.prepare(problem.prior, op, y, noise)
    p_ref = ref.prepare(problem.prior, op, y, noise)
    x = jr.normal(jr.key(0), problem.source_grid.shape)
    # t >= 0.3 (sigma_t^2 >= 4e-4): the library's float32 eigen-decomposition of the rank-90
    # covariance leaves ~1e-6 noise eigenvalues where the basis has exact zeros, which only
    # matters once sigma_t^2 is comparable
    for t in (0.3, 0.6, 0.9):
        a = fast.posterior_score(x, t, p_fast)
        b = ref.posterior_score(x, t, p_ref)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-2, atol=1e-2 * float(jnp.abs(b).max()))


def _tiny_kernel(**kwargs):
    """The 8x8-source problem with theta_E free and a 5-step exact source step (fast to compile)."""
    problem = Problem(source_shape=(8, 8), image_shape=(10, 10), rank=20, free=("theta_E",))
    exact = LowRankExactGuidance(basis=problem.basis)
    kernel = BlindLensGibbs(
        problem.lens_model, problem.observation, problem.prior,
        source_config=SourceSamplerConfig(guidance=exact, num_steps=5),
        warm_start=GibbsDDRMConfig(guidance=exact, num_steps=5), source_grid=problem.source_grid,
        warm_start_tries=1, **kwargs,
    )
    return problem, kernel


def test_numpyro_init_strategy_and_nuts_settings_are_accepted_and_used():
    """``init_strategy=init_to_value(...)`` starts the chain at those values (it was rejected);
    ``target_accept_prob``, ``max_tree_depth`` and ``dense_mass`` reach the lens move; ``lens_kernel``
    (removed) is refused with the advice."""
    from numpyro.infer import init_to_value

    source = np.zeros((8, 8), np.float32)  # given too, so init skips the source draw
    problem, kernel = _tiny_kernel(
        init_strategy=init_to_value(values={"theta_E": 0.77, "source": source}),
        target_accept_prob=0.7, max_tree_depth=3, dense_mass=False,
    )
    core = kernel.core
    assert core.target_accept_prob == 0.7 and core.max_tree_depth == 3 and not core.dense_metric
    assert core.lens_move == "nuts"
    state = kernel.init(jr.key(0), 5, None, (), {})
    theta = float(jax.nn.sigmoid(state.z["theta_E"]) * 0.7 + 0.5)  # Uniform(0.5, 1.2) support
    assert theta == pytest.approx(0.77, rel=1e-5)
    np.testing.assert_array_equal(np.asarray(state.z["source"]), source)
    two = Problem(source_shape=(8, 8), image_shape=(10, 10), rank=20, free=("theta_E", "center_x"))
    diag = _exact_kernel(two, steps=5, tries=1, dense_mass=False)
    inv = np.asarray(diag.init(jr.key(0), 5, None, (), {}).adapt_state.inverse_mass_matrix)
    assert inv.shape == (2, 2) and inv[0, 1] == 0.0 and inv[1, 0] == 0.0  # dense_mass=False: the diagonal
    assert not np.allclose(np.asarray(_exact_kernel(two, steps=5, tries=1).init(jr.key(0), 5, None, (), {})
                                      .adapt_state.inverse_mass_matrix)[0, 1], 0.0)
    with pytest.raises(ValueError, match="lens_kernel was removed"):
        _tiny_kernel(lens_kernel=lambda m: LensNUTS(m))
    with pytest.raises(ValueError, match="lens_move"):
        _tiny_kernel(lens_move="mala")
    with pytest.raises(ValueError, match="lens_search"):
        from blindlens.lens_initialization import EvidenceSearchConfig

        _tiny_kernel(init_strategy=init_to_value(values={"theta_E": 0.8}), lens_search=EvidenceSearchConfig())


def test_mcmc_pickles_and_print_summary_lists_only_lens_parameters(capsys):
    """``pickle.dumps(mcmc)`` failed on local closures; ``print_summary`` printed a row per source pixel."""
    problem, kernel = _tiny_kernel()
    mcmc = MCMC(kernel, num_warmup=2, num_samples=4, progress_bar=False)
    mcmc.run(jr.key(0))
    samples = mcmc.get_samples()
    assert set(samples) == {"theta_E", "source"} and samples["source"].shape == (4, 8, 8)
    assert "z" not in mcmc.get_extra_fields() and "diverging" in mcmc.get_extra_fields()
    mcmc.print_summary()
    out = capsys.readouterr().out
    assert "theta_E" in out and "source" not in out
    mcmc.print_summary(exclude_deterministic=False)  # the documented way to see the source pixels too
    assert "source[0,0]" in capsys.readouterr().out
    restored = pickle.loads(pickle.dumps(mcmc))
    np.testing.assert_array_equal(np.asarray(restored.get_samples()["theta_E"]), np.asarray(samples["theta_E"]))
    restored.post_warmup_state = restored.last_state  # and it continues sampling
    restored.run(jr.key(1))
    assert restored.get_samples()["source"].shape == (4, 8, 8)


class _CountingDraw:
    """A fake source step that counts its traces and returns the mean of the data it is given."""

    traces = 0
    num_score_evals = 0

    def __call__(self, key, operator, data, noise):
        _CountingDraw.traces += 1
        return jnp.zeros(operator.source_shape) + jnp.mean(data)


def test_the_observation_passed_as_model_data_reuses_one_compiled_sweep():
    """``mcmc.run(key, joint_model=...)`` runs the kernel's sweep on another observation of the same
    shape; with ``jit_model_args=True`` the second observation compiles nothing and its data are read."""
    from blindlens.numpyro_model import joint_model

    problem = Problem(source_shape=(8, 8), image_shape=(10, 10), rank=20, free=("theta_E",))
    kernel = BlindLensGibbs(problem.lens_model, problem.observation, problem.prior, source_grid=problem.source_grid,
                            source_sampler=_CountingDraw(), warm_start=None)
    obs = problem.observation
    models = [joint_model(problem.lens_model, Observation(obs.image * f, problem.noise, obs.psf,
                                                          problem.image_grid.pixel_scale), problem.source_grid)
              for f in (1.0, 3.0)]
    start = {**lens_unconstrained(problem.lens_model, {"theta_E": 0.8}), "source": jnp.zeros((8, 8))}
    mcmc = MCMC(kernel, num_warmup=2, num_samples=3, progress_bar=True, jit_model_args=True)
    means = []
    for i, model in enumerate(models):
        mcmc.run(jr.key(0), init_params=start, joint_model=model)
        if i == 0:
            traced = _CountingDraw.traces
        means.append(float(np.asarray(mcmc.get_samples()["source"])[-1, 0, 0]))
    assert traced >= 1 and _CountingDraw.traces == traced  # the second observation reused the compiled sweep
    assert means[1] > 2.0 * means[0] > 0.0  # and its own (three times brighter) data were read
    small = Problem(source_shape=(8, 8), image_shape=(12, 12), rank=20, free=("theta_E",))
    other = joint_model(problem.lens_model, small.observation, problem.source_grid)
    with pytest.raises(ValueError, match="joint_model differs"):
        kernel.init(jr.key(0), 1, start, (), {"joint_model": other})
