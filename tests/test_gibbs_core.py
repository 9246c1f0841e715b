"""The pure Gibbs core (init/sweep, the observation as data) and batches of lenses (sample_batch).

Exactness: on the gold-standard problem (Gaussian source prior, exact likelihood score; the lens
marginal is known, see test_gibbs_kernel.py) the core's chains, run through ``sample_batch``, must
reproduce the exact theta_E marginal (ESS-based MCSE z-scores of mean and sd below 2.326, KS below
its 1% critical value), and the likelihood tempered by 2 must fail the same check.
Compilation: one compiled sweep serves two observations of one shape, and gives them different
answers (the data are arguments, not constants).
"""

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from blindlens.gibbs_core import GibbsCore, GibbsCoreState
from blindlens.gibbsddrm import GibbsDDRMConfig
from blindlens.lens_batch import sample_batch, stack_models
from blindlens.numpyro_model import joint_model
from blindlens.observation import Observation
from blindlens.run_diagnostics import check_run
from blindlens.source_posterior import SourceSamplerConfig
from test_gibbs_kernel import _Constant, _mcse_sd, _PlusOne, empty_source_threshold, gold  # noqa: F401  (gold: fixture)

from blindlens.results.batch_results import batch_inference_data
from blindlens.testing.gold_problem import Z_99, LowRankExactGuidance, Problem
from blindlens.testing.gold_problem import gold_check as _gold_check


def _core(problem, model, **kwargs):
    exact = LowRankExactGuidance(basis=problem.basis)
    return GibbsCore.default(
        problem.lens_model, problem.prior, model, source_config=SourceSamplerConfig(guidance=exact, num_steps=40),
        **kwargs,
    )


def _model(problem, observation=None):
    return joint_model(problem.lens_model, problem.observation if observation is None else observation,
                       problem.source_grid)


def test_one_compiled_sweep_serves_two_observations_and_reads_their_data(x64):
    problem = Problem()
    other = Problem(seed=3, theta_E=0.9, noise=0.05)
    m1, m2 = _model(problem), _model(problem, other.observation)
    core = _core(problem, m1, num_warmup=5)
    traces = []

    @eqx.filter_jit
    def sweep(key, state, model):
        traces.append(1)
        return core.sweep(key, state, model)

    s1 = core.init(jr.key(0), m1, problem.truth)
    s2 = core.init(jr.key(0), m2, problem.truth)
    out1, info1 = sweep(jr.key(1), s1, m1)
    out2, info2 = sweep(jr.key(1), s2, m2)
    assert len(traces) == 1
    # the second observation's data were used: its noise is half, so chi^2 is far larger at the same lens
    assert float(info2.chi2) > 2.0 * float(info1.chi2)
    assert not np.allclose(np.asarray(out1.source), np.asarray(out2.source))
    # and the compiled sweep equals the eager one
    eager, _ = core.sweep(jr.key(1), s2, m2)
    np.testing.assert_allclose(np.asarray(eager.lens), np.asarray(out2.lens), rtol=1e-9, atol=1e-12)


def test_split_gibbs_source_move_runs_in_the_sweep_and_conflicts_are_refused():
    """``--source-move split-gibbs`` (the default) reaches the core: a sweep's source is exactly one
    split-Gibbs move of the current source with the sweep's source key, and its cost is counted;
    a refresh level given with it, or an unknown move, is a one-line error."""
    from blindlens.split_gibbs import SplitGibbsConfig, coupling_sigma, denoise_step_count, split_gibbs_move

    from blindlens.pipeline import SampleOptions, source_move, split_gibbs_config

    problem = Problem()
    model = _model(problem)
    config = SplitGibbsConfig(denoise_steps=3)
    core = _core(problem, model, num_warmup=5, split_gibbs=config)
    state = core.init(jr.key(0), model, problem.truth)
    new, _ = core.sweep(jr.key(1), state, model)
    k_src, _ = jr.split(jr.key(1))
    op, data, noise = core._source_inputs(state.lens, model)
    expected = split_gibbs_move(k_src, problem.prior, op, data, noise, state.source, config)
    np.testing.assert_allclose(np.asarray(new.source), np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert int(new.num_score_evals - state.num_score_evals) == config.network_passes_per_move
    # with adaptive steps the sweep counts the passes the move took at its rho (known at run time)
    adaptive = SplitGibbsConfig(denoise_step_size=1.0)
    core_a = _core(problem, model, num_warmup=5, split_gibbs=adaptive)
    moved, _ = jax.jit(lambda k, s: core_a.sweep(k, s, model))(jr.key(1), state)
    w = jnp.where(model.mask, 1.0 / model.noise**2, 0.0)
    steps = int(denoise_step_count(problem.prior, coupling_sigma(None, problem.prior, op, w, adaptive), adaptive))
    assert 1 < steps < adaptive.denoise_steps
    assert int(moved.num_score_evals - state.num_score_evals) == 2 * steps
    with pytest.raises(ValueError, match="leave refresh_sigma"):
        _core(problem, model, refresh_sigma=0.1, split_gibbs=config)
    # the default (auto) is split Gibbs; --refresh-sigma or --source-move refresh select the refresh
    assert split_gibbs_config(SampleOptions()) == SplitGibbsConfig()
    assert source_move(SampleOptions()) == "split-gibbs"
    assert split_gibbs_config(SampleOptions(refresh_sigma=0.1)) is None
    assert split_gibbs_config(SampleOptions(source_move="refresh")) is None
    with pytest.raises(ValueError, match="--source-move must be one of"):
        SampleOptions(source_move="hmc").validate()
    with pytest.raises(ValueError, match="drop one"):
        SampleOptions(source_move="split-gibbs", refresh_sigma=0.1).validate()


def test_warmup_descent_draws_afresh_in_the_first_half_of_warmup_in_the_core_and_in_batches(x64):
    """``--warmup-source-move auto`` (a fresh guided draw) reaches the core and the batch runner:
    a descending sweep's source is exactly ``source_draw`` with the sweep's key, a later one the
    split-Gibbs move; the run-time and the static choice agree, and the cost is counted per sweep."""
    from blindlens.split_gibbs import SplitGibbsConfig

    from blindlens.pipeline import AUTO_DESCENT_THRESHOLD, SampleOptions, warmup_source_move, warmup_source_threshold

    problem = Problem()
    model = _model(problem)
    config = SplitGibbsConfig(denoise_steps=3)
    core = _core(problem, model, num_warmup=4, split_gibbs=config, warmup_source_move="draw")
    assert core.descent_sweeps() == 2 and core.descent_sweeps(7) == 4
    state = core.init(jr.key(0), model, problem.truth)
    first, _ = core.sweep(jr.key(1), state, model)  # iteration 0 < 2: a fresh draw
    k_src, _ = jr.split(jr.key(1))
    op, data, noise = core._source_inputs(state.lens, model)
    np.testing.assert_allclose(np.asarray(first.source), np.asarray(core.source_draw(k_src, op, data, noise)),
                               rtol=1e-5, atol=1e-6)
    static, _ = core.sweep(jr.key(1), state, model, descend=True)
    np.testing.assert_allclose(np.asarray(static.source), np.asarray(first.source), rtol=1e-5, atol=1e-6)
    draw_cost = int(first.num_score_evals - state.num_score_evals)
    assert draw_cost == 41  # 40 guided steps and the final denoise
    later = first._replace(iteration=jnp.asarray(2, jnp.int32))
    moved, _ = core.sweep(jr.key(2), later, model)
    plain, _ = core.sweep(jr.key(2), later, model, descend=False)
    np.testing.assert_allclose(np.asarray(moved.source), np.asarray(plain.source), rtol=1e-5, atol=1e-6)
    assert int(moved.num_score_evals - later.num_score_evals) == config.network_passes_per_move
    # the batch runner: 2 descending + 2 plain warm-up sweeps, then 3 kept sweeps
    starts = {name: jnp.full((1, 2), value) for name, value in problem.truth.items()}
    draws = sample_batch(jr.key(3), core, [model], num_samples=3, starts=starts, keep_source=False)
    evals = np.asarray(draws.info.num_score_evals[0, 0])  # lens 0, chain 0
    assert np.all(np.diff(evals) == config.network_passes_per_move)
    assert int(evals[-1] - evals[0]) == 2 * config.network_passes_per_move
    # the chain's first source (a draw), 2 descending draws, 2 + 1 split-Gibbs moves (71 without the descent)
    assert int(evals[0]) == draw_cost + 2 * draw_cost + 3 * config.network_passes_per_move
    # the CLI's auto: a fresh draw before split Gibbs, none before the refresh
    assert warmup_source_move(SampleOptions()) == "draw"
    assert warmup_source_move(SampleOptions(source_move="refresh")) is None
    assert warmup_source_move(SampleOptions(chain_method="vectorized")) is None  # vmap would pay for both moves
    assert warmup_source_move(SampleOptions(chain_method="vectorized", warmup_source_move="draw")) == "draw"
    assert warmup_source_move(SampleOptions(warmup_source_move="none")) is None
    # auto descends only in chains whose start misfits; an explicit move applies to every chain
    assert warmup_source_threshold(SampleOptions()) == AUTO_DESCENT_THRESHOLD
    assert warmup_source_threshold(SampleOptions(warmup_source_move="draw")) is None
    with pytest.raises(ValueError, match="--warmup-source-move must be one of"):
        SampleOptions(warmup_source_move="anneal").validate()
    with pytest.raises(ValueError, match="drop one"):
        SampleOptions(warmup_source_move="draw", refresh_sigma=None).validate()
    with pytest.raises(ValueError, match="descent"):
        GibbsCore(problem.lens_model, core.source_draw, None, descent="draw")


def _batch_gold(problem, observation, key, num_warmup=100, num_samples=300, **kwargs):
    model = _model(problem, observation)
    core = _core(problem, model, num_warmup=num_warmup, **kwargs)
    starts = {"theta_E": jnp.full((1, 2), problem.truth["theta_E"])}
    draws = sample_batch(key, core, [model], num_samples=num_samples, starts=starts, keep_source=False)
    return np.asarray(draws.lens["theta_E"][0]), draws


def test_core_chains_match_the_exact_marginal_and_tempered_fail(gold):  # noqa: F811
    problem, grid, cdf, mean, sd = gold
    theta, draws = _batch_gold(problem, None, jr.key(11))
    ess = float(az.ess(theta))
    z_mean, z_sd, ks, ks_crit = _gold_check(theta, ess, _mcse_sd(theta), grid, cdf, mean, sd)
    acc = float(draws.info.accept_prob.mean())
    print(f"core gold: mean {theta.mean():.5f} vs {mean:.5f}, sd {theta.std():.5f} vs {sd:.5f}, ESS {ess:.0f}, "
          f"z_mean {z_mean:.2f}, z_sd {z_sd:.2f}, KS {ks:.3f} (crit {ks_crit:.3f}), accept {acc:.2f}")
    assert ess > 60
    assert abs(z_mean) < Z_99 and abs(z_sd) < Z_99 and ks < ks_crit
    assert not bool(np.any(np.asarray(draws.info.diverging)))

    obs = problem.observation
    tempered = Observation(obs.image, problem.noise / np.sqrt(2.0), obs.psf, problem.image_grid.pixel_scale)
    theta_b, _ = _batch_gold(problem, tempered, jr.key(11))
    ess_b = float(az.ess(theta_b))
    z_mean_b, z_sd_b, ks_b, ks_crit_b = _gold_check(theta_b, ess_b, _mcse_sd(theta_b), grid, cdf, mean, sd)
    print(f"tempered: z_mean {z_mean_b:.2f}, z_sd {z_sd_b:.2f}, KS {ks_b:.3f} (crit {ks_crit_b:.3f})")
    assert abs(z_mean_b) > Z_99 or abs(z_sd_b) > Z_99 or ks_b > ks_crit_b


def test_several_lens_transitions_per_sweep_keep_the_exact_marginal(gold):  # noqa: F811
    """``lens_transitions=3``: three HMC transitions per sweep, the step size adapted to their mean
    acceptance; the chains must still reproduce the exact theta_E marginal, the tempered likelihood not."""
    problem, grid, cdf, mean, sd = gold
    theta, draws = _batch_gold(problem, None, jr.key(12), num_samples=200, lens_transitions=3)
    ess = float(az.ess(theta))
    z_mean, z_sd, ks, ks_crit = _gold_check(theta, ess, _mcse_sd(theta), grid, cdf, mean, sd)
    print(f"3 transitions: mean {theta.mean():.5f} vs {mean:.5f}, sd {theta.std():.5f} vs {sd:.5f}, ESS {ess:.0f}, "
          f"z_mean {z_mean:.2f}, z_sd {z_sd:.2f}, KS {ks:.3f} (crit {ks_crit:.3f})")
    assert ess > 60 and int(draws.info.num_steps[0, 0, 0]) == 3 * 2
    assert abs(z_mean) < Z_99 and abs(z_sd) < Z_99 and ks < ks_crit
    obs = problem.observation
    tempered = Observation(obs.image, problem.noise / np.sqrt(2.0), obs.psf, problem.image_grid.pixel_scale)
    theta_b, _ = _batch_gold(problem, tempered, jr.key(12), num_samples=200, lens_transitions=3)
    z_mean_b, z_sd_b, ks_b, ks_crit_b = _gold_check(theta_b, float(az.ess(theta_b)), _mcse_sd(theta_b), grid, cdf,
                                                    mean, sd)
    assert abs(z_mean_b) > Z_99 or abs(z_sd_b) > Z_99 or ks_b > ks_crit_b
    with pytest.raises(ValueError, match="lens_transitions"):
        _core(problem, _model(problem), lens_transitions=0)


def test_a_lens_in_a_batch_draws_what_it_draws_alone(x64):
    problem = Problem()
    other = Problem(seed=1, theta_E=0.9)
    m1, m2 = _model(problem), _model(problem, other.observation)
    core = _core(problem, m1, num_warmup=10)
    starts = {"theta_E": jnp.array([[0.8, 0.8], [0.9, 0.9]]), "center_x": jnp.full((2, 2), 0.03)}
    both = sample_batch(jr.key(4), core, [m1, m2], num_samples=15, starts=starts, batch_size=2)
    alone = sample_batch(jr.key(4), core, [m2], num_samples=15, starts={k: v[1:] for k, v in starts.items()},
                         first_index=1)
    for name in ("theta_E", "center_x"):
        np.testing.assert_allclose(np.asarray(alone.lens[name][0]), np.asarray(both.lens[name][1]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(alone.source[0]), np.asarray(both.source[1]), rtol=0, atol=1e-9)
    # the two lenses are different problems: their theta_E posteriors do not overlap
    assert abs(float(both.lens["theta_E"][0].mean()) - float(both.lens["theta_E"][1].mean())) > 0.05
    assert both.final.lens.shape == (2, 2, 2) and isinstance(both.final, GibbsCoreState)


def test_warm_started_batch_gives_single_run_inference_data():
    """Cold starts: each chain starts from the best of 4 continuous-time draws (single tries end in
    a wrong mode for about 5 of 16 keys here, test_gibbs_kernel.py), so every chain must fit."""
    problem = Problem(free=("theta_E",))
    model = _model(problem)
    core = _core(problem, model, num_warmup=8)
    exact = LowRankExactGuidance(basis=problem.basis)
    draws = sample_batch(jr.key(2), core, [model, model], num_samples=12, prior=problem.prior,
                         warm_start=GibbsDDRMConfig(guidance=exact, num_steps=60), warm_start_tries=4)
    idata = batch_inference_data(draws, 1, model, problem.observation, problem.source_grid)
    post = idata.posterior
    assert set(post.data_vars) >= {"theta_E", "source"}
    assert post["theta_E"].shape == (2, 12) and post["source"].shape == (2, 12, 16, 16)
    assert {"lp", "acceptance_rate", "step_size", "n_steps", "diverging", "chi2"} <= set(idata.sample_stats.data_vars)
    assert "normalized_residual" in idata.posterior_predictive
    chi2 = np.asarray(draws.info.chi2).mean(axis=-1) / problem.observation.image.size
    print("chi2/N per lens and chain:", chi2.round(3))
    assert np.all((chi2 > 0.7) & (chi2 < 1.3))  # every warm-started chain sits in the right mode
    check_run(idata)  # the diagnostics read it like a single-lens run


def test_bad_batch_inputs_are_refused_clearly():
    problem = Problem()
    model = _model(problem)
    core = _core(problem, model)
    small = Problem(image_shape=(20, 20))
    with pytest.raises(ValueError, match="group the observations"):
        stack_models([model, _model(small)])
    with pytest.raises(ValueError, match="needs the source prior"):
        sample_batch(jr.key(0), core, [model], num_samples=2)
    with pytest.raises(ValueError, match="lacks the lens sites"):
        sample_batch(jr.key(0), core, [model], num_samples=2, starts={"theta_E": jnp.ones((1, 2))})
    with pytest.raises(ValueError, match="shape"):
        sample_batch(jr.key(0), core, [model], num_samples=2,
                     starts={"theta_E": jnp.ones((2, 2)), "center_x": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match="num_leapfrog"):
        GibbsCore.default(problem.lens_model, problem.prior, model, num_leapfrog=0)
    with pytest.raises(ValueError, match="pass model="):
        GibbsCore.default(problem.lens_model, problem.prior)


def test_observation_files_in_one_batch_write_one_netcdf_each(tmp_path, x64):
    """Float64, so that the in-batch and alone runs agree beyond float32 reassociation (jax 0.12 moves
    a float32 chain by 8e-4 relative between the two)."""
    from blindlens.observation import save_observation

    from blindlens.batch_pipeline import sample_observations_batch
    from blindlens.pipeline import SampleOptions

    kw = dict(source_shape=(8, 8), image_shape=(12, 12), pixel_scale=0.15, rank=30, length_scale=1.5)
    paths = []
    for k in range(2):
        lens = Problem(**kw, theta_E=0.55 + 0.1 * k, seed=k)
        paths.append(save_observation(lens.observation, tmp_path / f"lens_{k}.npz"))
    (tmp_path / "sis.py").write_text(
        "import numpyro, numpyro.distributions as dist\nfrom blindlens.lens_models import SIS\n"
        "def lens():\n    return SIS(theta_E=numpyro.sample('theta_E', dist.Uniform(0.4, 0.9)))\n")
    prior = Problem(**kw).prior
    options = SampleOptions(prior=prior, lens_model=f"{tmp_path / 'sis.py'}:lens", chains=2, warmup=3, draws=4,
                            steps=4, warm_start_steps=4, warm_start_tries=2, supersampling=1)
    both = sample_observations_batch(paths, tmp_path / "out", options)
    assert [p.name for p in sorted((tmp_path / "out").glob("*.nc"))] == ["lens_0.nc", "lens_1.nc"]
    assert both[1].posterior["theta_E"].shape == (2, 4) and both[1].posterior.attrs["batch_size"] == 2
    alone = sample_observations_batch(paths[1:], tmp_path / "alone", options, first_index=1)
    np.testing.assert_allclose(alone[0].posterior["theta_E"].values, both[1].posterior["theta_E"].values,
                               rtol=1e-4)
    with pytest.raises(ValueError, match="nothing is overwritten"):
        sample_observations_batch(paths, tmp_path / "out", options)


def test_nuts_transition_samples_a_gaussian_under_matched_and_mismatched_metrics():
    """``lens_block.nuts_transition`` (the core's NUTS move) leaves N(0, C) invariant whatever the metric;
    a potential tempered by 1/2 (the broken variant) doubles the variance and fails the same check."""
    from blindlens.lens_block import nuts_transition

    cov = jnp.array([[1.0, 0.3], [0.3, 0.25]])
    prec = jnp.linalg.inv(cov)

    def chain(inverse_mass, scale=1.0):
        def step(u, k):
            t = nuts_transition(k, u, lambda v: scale * 0.5 * v @ prec @ v, inverse_mass, jnp.asarray(0.8), 6)
            return t.u, t.u

        return np.asarray(jax.jit(lambda k: jax.lax.scan(step, jnp.zeros(2), jr.split(k, 6000))[1])(jr.key(3)))

    for inverse_mass in (cov, jnp.diag(jnp.diag(cov)) * 3.0):
        draws = chain(inverse_mass)
        ess = float(az.ess(draws[None, :, 0]))
        var = draws[:, 0].var()
        assert abs(var - 1.0) < 4.0 * np.sqrt(2.0 / ess), (var, ess)  # the variance's MC error at this ESS
        assert abs(draws[:, 0].mean()) < 4.0 / np.sqrt(ess)
    broken = chain(cov, scale=0.5)
    assert abs(broken[:, 0].var() - 1.0) > 0.5


def test_nuts_lens_move_keeps_the_exact_marginal(gold):  # noqa: F811
    """``lens_move="nuts"`` (NumPyro's tree with the curvature metric, the kernel's lens move as a pure
    function) reproduces the exact theta_E marginal; the tempered likelihood does not."""
    problem, grid, cdf, mean, sd = gold
    theta, draws = _batch_gold(problem, None, jr.key(13), num_samples=250, lens_move="nuts")
    ess = float(az.ess(theta))
    z_mean, z_sd, ks, ks_crit = _gold_check(theta, ess, _mcse_sd(theta), grid, cdf, mean, sd)
    print(f"nuts: mean {theta.mean():.5f} vs {mean:.5f}, sd {theta.std():.5f} vs {sd:.5f}, ESS {ess:.0f}, "
          f"z_mean {z_mean:.2f}, z_sd {z_sd:.2f}, KS {ks:.3f} (crit {ks_crit:.3f})")
    assert ess > 60 and abs(z_mean) < Z_99 and abs(z_sd) < Z_99 and ks < ks_crit
    assert np.all(np.isfinite(np.asarray(draws.info.energy)))
    obs = problem.observation
    tempered = Observation(obs.image, problem.noise / np.sqrt(2.0), obs.psf, problem.image_grid.pixel_scale)
    theta_b, _ = _batch_gold(problem, tempered, jr.key(13), num_samples=250, lens_move="nuts")
    z_mean_b, z_sd_b, ks_b, ks_crit_b = _gold_check(theta_b, float(az.ess(theta_b)), _mcse_sd(theta_b), grid, cdf,
                                                    mean, sd)
    assert abs(z_mean_b) > Z_99 or abs(z_sd_b) > Z_99 or ks_b > ks_crit_b
    with pytest.raises(ValueError, match="lens_move"):
        _core(problem, _model(problem), lens_move="mala")
    with pytest.raises(ValueError, match="max_tree_depth"):
        _core(problem, _model(problem), lens_move="nuts", max_tree_depth=(4, 0))


def test_descent_threshold_lets_only_a_poorly_fitting_start_descend(gold):  # noqa: F811
    """``descent_threshold=k``: a chain descends (fresh draws in the first warm-up sweeps) only if its start's
    chi^2/N exceeds ``1 + k sqrt(2/N)``, decided at init; the static ``descend=True`` path obeys it too."""
    problem = gold[0]
    model = _model(problem)
    zeros = jnp.zeros(problem.source_grid.shape)
    boundary = empty_source_threshold(problem, model)
    for k, descends in ((0.99 * boundary, True), (1.01 * boundary, False)):
        core = GibbsCore(problem.lens_model, _Constant(), _PlusOne(), num_warmup=4, descent="draw",
                         descent_threshold=float(k))
        start = core.init(jr.key(0), model, {"theta_E": 1.0}, zeros)
        assert bool(start.descends) == descends
        for kwargs in ({}, {"warmup": True, "descend": True}):
            assert float(core.sweep(jr.key(1), start, model, **kwargs)[0].source[0, 0]) == (7.0 if descends else 1.0)
    without = GibbsCore(problem.lens_model, _Constant(), _PlusOne(), num_warmup=4, descent="draw")
    assert bool(without.init(jr.key(0), model, {"theta_E": 1.0}, zeros).descends)
    with pytest.raises(ValueError, match="descent_threshold"):
        GibbsCore(problem.lens_model, _Constant(), _PlusOne(), descent="draw", descent_threshold=-1.0)


def test_frozen_metric_is_the_inverse_mean_curvature_of_the_warmup_window(x64):
    """The metric of a warm-up sweep is the local SoftAbs curvature before the window and the inverse of
    the window's running mean curvature in it; sampling keeps the last one. Each sweep's curvature is
    taken at its starting lens and its new source, so it can be recomputed from the recorded states."""
    problem = Problem()
    model = _model(problem)
    for window, start in ((0.5, 3), (0.0, 6)):
        core = _core(problem, model, num_warmup=6, metric_window=window)
        assert core.metric_window_start() == start
        states = [core.init(jr.key(0), model, problem.truth)]
        for k in range(8):
            states.append(core.sweep(jr.fold_in(jr.key(1), k), states[-1], model)[0])
        local = [core.curvature_mass(states[k].lens, states[k + 1].source, model) for k in range(6)]
        for k in range(start):  # before the window: the local curvature of the sweep
            np.testing.assert_allclose(states[k + 1].inverse_mass, np.linalg.inv(local[k]), rtol=1e-8)
        if start < 6:
            mean = np.mean(np.stack(local[start:]), axis=0)
            np.testing.assert_allclose(states[6].mass, mean, rtol=1e-10)
            np.testing.assert_allclose(states[6].inverse_mass, np.linalg.inv(mean), rtol=1e-8)
            assert not np.allclose(states[6].inverse_mass, np.linalg.inv(local[5]), rtol=1e-3)  # not the last local one
        for k in (7, 8):  # sampling sweeps keep the frozen metric
            np.testing.assert_array_equal(states[k].inverse_mass, states[6].inverse_mass)
    with pytest.raises(ValueError, match="metric_window must lie in"):
        _core(problem, model, num_warmup=6, metric_window=1.5)
