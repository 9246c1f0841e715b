"""The guided source sampler against exact answers (data-and-validation.md §B.2, V-8/V-9/V-11).

Monte-Carlo bands (each sample's whitened ``z`` has ``d`` independent N(0, r_i) coordinates,
``r_i`` the expected variance ratio of eigenmode ``i``):

* mean of ``|z|^2 / d`` over ``M`` samples: sd ``sqrt(2 mean(r^2) / (d M))``;
* mean offset ``M |z_bar|^2 / d`` (normalised by ``r``): ``chi^2_d / d``, sd ``sqrt(2 / d)``;
* per-mode variance ratio: ``chi^2_M / M``, sd ``sqrt(2 / M)``; min and max over ``d`` modes are
  tested against the two-sided Bonferroni band ``z = 4.0`` (``P(false alarm) ~ 1.6 %`` per run).

Fixed keys make every test deterministic; the 4-sigma bands make a correct sampler pass with
probability > 0.9999 for the scalar checks. The tempered (likelihood x2) control must fall
outside the same bands.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from blindlens.diffusion_sde import VESDE
from blindlens.likelihood_score import (
    CLA,
    CalibratedTweedie,
    ExactGaussianLikelihoodScore,
    PiGDM,
    TemperedLikelihoodScore,
)
from blindlens.source_posterior import (
    _TRACES,
    SourceSamplerConfig,
    fixed_lens_posterior,
    refresh_steps,
    sample_source_posterior,
    source_refresh,
    source_step,
)

from blindlens.testing.lensed_gaussian import (
    band_failures,
    gaussian_problem,
    lensing_operator,
    mixture_problem,
    posterior_metrics,
)

Z_SCALAR = 4.0
Z_MODES = 4.0
STEPS = 200
T_FINAL = 1e-3


@pytest.fixture(scope="module")
def problem():
    prior, op, y, sigma, truth = gaussian_problem(jr.key(2026))
    return prior, op, y, sigma, prior.posterior(op, y, sigma)


def _run(problem, guidance, num_samples, key=7, num_steps=STEPS, solver="auto"):
    prior, op, y, sigma, post = problem
    samples = sample_source_posterior(
        jr.key(key), prior, op, y, sigma, num_samples=num_samples, guidance=guidance, num_steps=num_steps,
        t_final=T_FINAL, solver=solver,
    )
    return posterior_metrics(post, samples, float(prior.sde.sigma(T_FINAL)))


def _failures(m):
    """Which of the three checks are outside their bands (empty list: calibrated)."""
    return band_failures(m, Z_SCALAR, Z_MODES)


def _report(name, m):
    r = m["ratio_normalised"]
    print(
        f"\n{name:>10}: chi2/d {m['chi2_per_dim']:.4f} (expect {m['chi2_expected']:.4f} +- {m['chi2_sd']:.4f}), "
        f"mean offset {m['mean_offset']:.2f}, mode variance ratio {float(jnp.min(r)):.2f}-{float(jnp.max(r)):.2f} "
        f"(band +-{Z_MODES * m['ratio_sd']:.2f}), M={m['num_samples']}"
    )


def test_exact_posterior_score_is_calibrated(problem):
    """Integrator check (V-8): exact posterior score, 1000 samples."""
    m = _run(problem, ExactGaussianLikelihoodScore(), 1000)
    _report("exact", m)
    assert _failures(m) == []


def test_calibrated_score_passes_exact_gaussian_test(problem):
    """The new default-accuracy score (issue 6) passes the same bands (V-9)."""
    m = _run(problem, CalibratedTweedie(), 300)
    _report("calibrated", m)
    assert _failures(m) == []
    assert abs(m["chi2_per_dim"] - 1.0) < 0.02


def test_tempered_control_fails(problem):
    """A deliberately wrong sampler (likelihood x2) must fall outside the bands."""
    m = _run(problem, TemperedLikelihoodScore(ExactGaussianLikelihoodScore(), 2.0), 300)
    _report("tempered", m)
    assert set(_failures(m)) == {"chi2", "mean_offset", "mode_variance"}
    assert m["chi2_per_dim"] < m["chi2_expected"] - 10 * m["chi2_sd"]  # under-dispersed


def test_cla_and_pigdm_reported(problem):
    """CLA (1000 steps: it is stiff) and PiGDM: finite; the failure is reported, and asserted
    only where it is large and robust (both miss the posterior mean by many sigma)."""
    for name, guidance, steps in (("CLA", CLA(), 1000), ("PiGDM", PiGDM(), STEPS)):
        m = _run(problem, guidance, 300, num_steps=steps)
        _report(name, m)
        assert np.isfinite(m["chi2_per_dim"])
        assert "mean_offset" in _failures(m) and "mode_variance" in _failures(m)


def test_imex_solver_passes_exact_gaussian_test(problem):
    """The IMEX solver (likelihood score implicit by CG) samples the exact posterior, and the
    tempered control run through it fails the same bands."""
    m = _run(problem, ExactGaussianLikelihoodScore(), 300, num_steps=1000, solver="imex")
    _report("exact+imex", m)
    assert _failures(m) == []
    bad = _run(problem, TemperedLikelihoodScore(ExactGaussianLikelihoodScore(), 2.0), 300, num_steps=1000, solver="imex")
    assert "chi2" in _failures(bad)


def test_cla_is_stable_with_imex_and_converges_to_the_explicit_limit(problem):
    """Explicit Euler with CLA diverges at 50 steps (stiff: h lambda_max >> 2); the default IMEX
    solver is finite there, and at 1000 steps agrees with explicit Euler at 3000 (CLA's own
    continuous-time answer) within the Monte-Carlo error of chi^2/d (same keys)."""
    explicit = _run(problem, CLA(), 100, num_steps=50, solver="euler")
    assert not np.isfinite(explicit["chi2_per_dim"]) or explicit["chi2_per_dim"] > 10
    coarse = _run(problem, CLA(), 100, num_steps=50)
    assert np.isfinite(coarse["chi2_per_dim"]) and coarse["chi2_per_dim"] < 1.5
    implicit = _run(problem, CLA(), 300, num_steps=1000)
    reference = _run(problem, CLA(), 300, num_steps=3000, solver="euler")
    assert abs(implicit["chi2_per_dim"] - reference["chi2_per_dim"]) < 3 * reference["chi2_sd"]


def test_imex_refuses_a_non_affine_likelihood(problem):
    prior, op, y, sigma, _ = problem
    with pytest.raises(ValueError, match="affine"):
        sample_source_posterior(jr.key(0), prior, op, y, sigma, num_samples=2, guidance=PiGDM(), solver="imex")


def test_residual_chi2_of_fixed_lens_posterior(problem):
    """E_s[chi^2] = |W^1/2 (y - A mu)|^2 + tr(W A C A^T) for exact samples of one observation."""
    prior, op, y, sigma, post = problem
    config = SourceSamplerConfig(guidance=ExactGaussianLikelihoodScore(), num_steps=STEPS)
    res = fixed_lens_posterior(jr.key(3), prior, op, y, sigma, num_samples=500, config=config)
    a = op.matrix
    expected = float(jnp.sum((y - op(post.mean)) ** 2) / sigma**2 + jnp.trace(a @ post.cov @ a.T) / sigma**2)
    se = float(jnp.std(res.chi2) / jnp.sqrt(res.chi2.size))
    assert res.num_pixels == y.size
    assert abs(float(jnp.mean(res.chi2)) - expected) < Z_SCALAR * se
    np.testing.assert_allclose(res.model_images, jax.vmap(op)(res.samples), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.normalized_residuals, (y - res.model_images) / sigma, rtol=1e-5, atol=1e-5)


# ---- Gaussian mixture: mode weights (V-11) ------------------------------------------------------


_CALIBRATED_GMM = pytest.param(
    CalibratedTweedie(),
    id="calibrated",
    marks=pytest.mark.xfail(
        strict=True,
        reason="known limitation: CalibratedTweedie assumes a Gaussian p(s | x_t), false for a multimodal "
        "prior at intermediate noise; it over-weights the minor mode (0.47 vs 0.36 here). Strict: a fix "
        "must remove this mark.",
    ),
)


@pytest.mark.parametrize("guidance", [pytest.param(ExactGaussianLikelihoodScore(), id="exact"), _CALIBRATED_GMM])
def test_mixture_mode_weights(guidance):
    prior, op, y, sigma = mixture_problem()
    post = prior.posterior(op, y, sigma)
    weights = np.asarray(post.weights)
    assert 0.2 < weights[0] < 0.5  # a genuinely two-mode posterior
    n = 600
    samples = sample_source_posterior(jr.key(5), prior, op, y, sigma, num_samples=n, guidance=guidance, num_steps=STEPS)
    resp = post.responsibilities(samples)
    assert float(jnp.mean(jnp.max(resp, axis=1) > 0.99)) > 0.98  # samples sit clearly in one mode
    frac = float(jnp.mean(jnp.argmax(resp, axis=1) == 0))
    se = np.sqrt(weights[0] * (1 - weights[0]) / n)
    print(f"\nmode-0 weight: sampled {frac:.3f}, analytic {weights[0]:.3f} +- {se:.3f} ({type(guidance).__name__})")
    assert abs(frac - weights[0]) < Z_SCALAR * se


# ---- determinism, batching, compilation ---------------------------------------------------------


def _small(key=1):
    return gaussian_problem(jr.key(key), ns=8, ni=12)[:4]


def test_deterministic_given_key_and_batch_independent():
    prior, op, y, sigma = _small()
    kw = dict(num_samples=6, guidance=CLA(), num_steps=20, solver="euler")
    a = sample_source_posterior(jr.key(0), prior, op, y, sigma, **kw)
    b = sample_source_posterior(jr.key(0), prior, op, y, sigma, **kw)
    c = sample_source_posterior(jr.key(1), prior, op, y, sigma, **kw)
    d = sample_source_posterior(jr.key(0), prior, op, y, sigma, batch_size=4, **kw)
    assert a.shape == (6, 8, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(a, d, rtol=1e-5, atol=1e-5)
    # source_step draws sample i with key split(key, n)[i]
    config = SourceSamplerConfig(guidance=CLA(), num_steps=20, solver="euler")
    one = eqx.filter_jit(source_step)(jr.split(jr.key(0), 6)[2], prior, op, y, sigma, config)
    np.testing.assert_allclose(one, a[2], rtol=1e-5, atol=1e-5)
    # the IMEX solver stops its CG solves at a relative residual of 1e-5, so batched and unbatched
    # float32 arithmetic agree to that tolerance amplified over the steps, not to rounding
    kw["solver"] = "imex"
    a = sample_source_posterior(jr.key(0), prior, op, y, sigma, **kw)
    np.testing.assert_array_equal(a, sample_source_posterior(jr.key(0), prior, op, y, sigma, **kw))
    d = sample_source_posterior(jr.key(0), prior, op, y, sigma, batch_size=4, **kw)
    np.testing.assert_allclose(a, d, rtol=0, atol=2e-3 * float(jnp.max(jnp.abs(a))))


def test_no_retrace_for_new_data_or_lens():
    prior, _, y, sigma = _small()
    kw = dict(num_samples=3, guidance=PiGDM(), num_steps=10)
    op1 = lensing_operator(8, 12, 0.40)
    op2 = lensing_operator(8, 12, 0.45)  # a different lens, same shapes
    sample_source_posterior(jr.key(0), prior, op1, y, sigma, **kw)
    before = _TRACES["sample_batch"]
    sample_source_posterior(jr.key(1), prior, op1, y + 0.1, sigma, **kw)
    sample_source_posterior(jr.key(2), prior, op2, y, sigma * 1.5, **kw)
    assert _TRACES["sample_batch"] == before
    sample_source_posterior(jr.key(2), prior, op2, y, sigma, **{**kw, "num_steps": 11})  # new config: retrace
    assert _TRACES["sample_batch"] == before + 1


def test_masked_pixels_are_ignored():
    """Data at pixels with infinite noise cannot change the samples."""
    prior, op, y, sigma = _small()
    noise = jnp.full(y.shape, sigma).at[:4].set(jnp.inf)
    kw = dict(num_samples=4, guidance=CalibratedTweedie(), num_steps=20)
    a = sample_source_posterior(jr.key(0), prior, op, y, noise, **kw)
    b = sample_source_posterior(jr.key(0), prior, op, y.at[:4].set(1e3), noise, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bad_sampler_inputs():
    prior, op, y, sigma = _small()
    with pytest.raises(ValueError, match="num_samples"):
        sample_source_posterior(jr.key(0), prior, op, y, sigma, num_samples=0)
    with pytest.raises(ValueError, match="solver"):
        SourceSamplerConfig(solver="rk4")
    with pytest.raises(ValueError, match="guidance"):
        SourceSamplerConfig(guidance="cla")
    wrong_scale = lensing_operator(8, 12, 0.4)
    wrong_scale = eqx.tree_at(lambda o: o.source_grid, wrong_scale, type(wrong_scale.source_grid)((8, 8), 0.2))
    with pytest.raises(ValueError, match="arcsec/pixel"):
        sample_source_posterior(jr.key(0), prior, wrong_scale, y, sigma, num_samples=1)


# ---- CLI: blindlens sample --fixed-lens ---------------------------------------------------------


def test_cli_sample_fixed_lens(tmp_path, monkeypatch):
    """End to end on a tiny problem; a Gaussian prior stands in for a trained prior file."""
    import arviz as az
    from blindlens.gaussian_prior import GaussianSourcePrior
    from blindlens.lens_config import save_lens_config
    from blindlens.lens_models import SIS
    from blindlens.observation import Observation, save_observation
    from blindlens.psf import gaussian_psf
    from blindlens.score_prior import ScorePrior
    from blindlens.source_posterior import fixed_lens_operator

    from blindlens import cli
    from blindlens.pipeline import DEFAULTS

    prior = GaussianSourcePrior.squared_exponential((8, 8), 1.5, VESDE(1e-3, 10.0), 0.1, amplitude=0.5, jitter=1e-3)
    monkeypatch.setattr(ScorePrior, "load", classmethod(lambda cls, path: prior))
    lens = SIS(0.5, 0.0, 0.0)
    mask = np.ones((16, 16)).astype(bool)
    mask[0, :3] = False
    blank = Observation(np.zeros((16, 16)), 0.05, gaussian_psf(0.15, 0.08), 0.08, mask=mask)
    op = fixed_lens_operator(blank, lens, prior, supersampling=DEFAULTS.supersampling)  # the CLI's operator
    image = np.asarray(op(prior.sample(jr.key(0), 1)[0])) + 0.05 * np.asarray(jr.normal(jr.key(1), (16, 16)))
    obs_path = save_observation(Observation(image, 0.05, blank.psf, 0.08, mask=mask), tmp_path / "obs.npz")
    lens_path = save_lens_config(lens, tmp_path / "lens.toml")
    out = tmp_path / "posterior.nc"
    argv = ["sample", str(obs_path), "--fixed-lens", str(lens_path), "--num-samples", "4", "--out", str(out),
            "--prior", str(tmp_path / "prior.eqx"), "--steps", "30", "--seed", "3", "--guidance", "calibrated",
            "--source-center", "0", "0"]
    assert cli.main(argv) == 0
    idata = az.from_netcdf(out)
    src = idata.posterior["source"]
    assert src.dims == ("chain", "draw", "source_y", "source_x") and src.shape == (1, 4, 8, 8)
    np.testing.assert_allclose(src["source_x"].values, (np.arange(8) - 3.5) * 0.1, atol=1e-12)
    np.testing.assert_allclose(idata.observed_data["image"].values, np.where(mask, image, 0.0), rtol=1e-6, atol=1e-7)
    model = idata.posterior_predictive["model_image"].values[0]
    np.testing.assert_allclose(model[0], op(jnp.asarray(src.values[0, 0])), rtol=1e-4, atol=1e-5)
    resid = idata.posterior_predictive["normalized_residual"].values[0]
    assert np.isnan(resid[:, 0, 0]).all() and np.isfinite(resid[:, mask]).all()
    np.testing.assert_allclose(resid[:, mask], ((image - model) / 0.05)[:, mask], rtol=1e-4, atol=1e-4)
    assert (tmp_path / "posterior.png").stat().st_size > 10_000
    # the same seed gives the same samples; a missing lens file is a clear error (exit 2)
    assert cli.main([a if a != str(out) else str(tmp_path / "b.nc") for a in argv]) == 0
    np.testing.assert_array_equal(az.from_netcdf(tmp_path / "b.nc").posterior["source"].values, src.values)
    assert cli.main(["sample", str(obs_path), "--out", str(tmp_path / "c.nc"), "--fixed-lens", str(tmp_path / "missing.toml")]) == 2
    # polished draws: moved away from the guided ones, recorded in the attributes; not for joint runs
    polished = [a if a != str(out) else str(tmp_path / "d.nc") for a in argv] + ["--polish-moves", "2"]
    assert cli.main(polished) == 0
    idata_d = az.from_netcdf(tmp_path / "d.nc")
    assert int(idata_d.posterior.attrs["polish_moves"]) == 2
    moved = idata_d.posterior["source"].values
    assert moved.shape == src.shape and np.all(np.isfinite(moved)) and not np.allclose(moved, src.values)
    assert cli.main(["sample", str(obs_path), "--out", str(tmp_path / "e.nc"), "--polish-moves", "2"]) == 2
    # --source-center auto (the default): the grid sits on the data's light traced back through the lens
    from blindlens.lensing_operator import source_centroid

    auto = [a if a != str(out) else str(tmp_path / "f.nc") for a in argv[:-3]]  # without --source-center 0 0
    assert cli.main(auto) == 0
    cx, _ = source_centroid(lens, image, 0.05, blank.image_grid, mask=mask)
    assert abs(cx) > 0.01  # off the origin, so the check below could fail
    np.testing.assert_allclose(az.from_netcdf(tmp_path / "f.nc").posterior["source_x"].values,
                               cx + (np.arange(8) - 3.5) * 0.1, atol=1e-6)


# ---- partial refresh (the Gibbs kernel's cheap source move) -------------------------------------


def test_cli_fixed_lens_holds_the_lens_light_fixed(tmp_path, monkeypatch):
    """A lens file with [[light]] tables: its light is subtracted before the source draws and added
    back to the model images. Same seed, same source draws as the mass-only file on light-free data;
    the old code drew the source against the data with the deflector still in it."""
    import arviz as az
    from blindlens.gaussian_prior import GaussianSourcePrior
    from blindlens.lens_config import save_lens_config
    from blindlens.lens_models import SIS
    from blindlens.light_profiles import LensLightImager, LensWithLight, SersicEllipse
    from blindlens.observation import Observation, save_observation
    from blindlens.psf import gaussian_psf
    from blindlens.score_prior import ScorePrior
    from blindlens.source_posterior import fixed_lens_operator

    from blindlens import cli
    from blindlens.pipeline import DEFAULTS

    prior = GaussianSourcePrior.squared_exponential((8, 8), 1.5, VESDE(1e-3, 10.0), 0.1, amplitude=0.5, jitter=1e-3)
    monkeypatch.setattr(ScorePrior, "load", classmethod(lambda cls, path: prior))
    mass = SIS(0.5, 0.0, 0.0)
    blank = Observation(np.zeros((16, 16)), 0.05, gaussian_psf(0.15, 0.08), 0.08)
    op = fixed_lens_operator(blank, mass, prior)
    image = np.asarray(op(prior.sample(jr.key(0), 1)[0])) + 0.05 * np.asarray(jr.normal(jr.key(1), (16, 16)))
    light = SersicEllipse(amp=300.0, R_sersic=0.2, n_sersic=2.0, e1=0.1, center_x=0.02)
    light_image = np.asarray(LensLightImager(blank.image_grid, blank.psf_operator(), DEFAULTS.supersampling)(light))
    assert light_image.max() > 20 * 0.05  # the deflector dominates the noise
    lit_data = (image + light_image).astype(np.float32)
    bare_data = lit_data - light_image  # what the run subtracts, so both runs see the same numbers
    runs = {}
    for name, lens, data in (("bare", mass, bare_data), ("light", LensWithLight(mass, light), lit_data)):
        obs_path = save_observation(Observation(data, 0.05, blank.psf, 0.08), tmp_path / f"{name}.npz")
        lens_path = save_lens_config(lens, tmp_path / f"{name}.toml")
        out = tmp_path / f"{name}.nc"
        argv = ["sample", str(obs_path), "--fixed-lens", str(lens_path), "--num-samples", "3", "--out", str(out),
                "--prior", str(tmp_path / "prior.eqx"), "--steps", "20", "--seed", "3", "--source-center", "0", "0"]
        assert cli.main(argv) == 0
        runs[name] = az.from_netcdf(out)
    bare, lit = runs["bare"], runs["light"]
    # The same draws: the bare run's data are the lit data minus the light, as the run computes
    # them. Without the subtraction the deflector (peak > 1, 20 noise sd) puts errors of order 10.
    np.testing.assert_allclose(lit.posterior["source"].values, bare.posterior["source"].values, atol=1e-5)
    np.testing.assert_allclose(lit.posterior_predictive["model_image"].values,
                               bare.posterior_predictive["model_image"].values + light_image, atol=1e-5)
    np.testing.assert_allclose(lit.posterior_predictive["normalized_residual"].values,
                               bare.posterior_predictive["normalized_residual"].values, atol=1e-4)


def test_refresh_steps_keep_the_step_length():
    prior, *_ = _small()
    config = SourceSamplerConfig(num_steps=50, t_final=1e-3)
    t_start, steps = refresh_steps(prior, config, 0.1)
    assert abs(float(prior.sde.sigma(t_start)) - 0.1) < 1e-6
    assert steps == int(np.ceil(50 * (t_start - 1e-3) / (1 - 1e-3)))
    for bad in (prior.sde.sigma_min / 2, prior.sde.sigma_max * 2):
        with pytest.raises(ValueError, match="refresh_sigma"):
            refresh_steps(prior, config, bad)


def test_partial_refresh_leaves_the_exact_posterior_invariant(problem):
    """Exact posterior draws moved once by ``source_refresh`` (exact score) stay inside the
    bands; the same move with a likelihood tempered by 2 leaves them."""
    prior, op, y, sigma, post = problem
    start = post.sample(jr.key(11), 300)
    keys = jr.split(jr.key(12), 300)

    def moved(guidance):
        config = SourceSamplerConfig(guidance=guidance, num_steps=STEPS, t_final=T_FINAL)
        step = eqx.filter_jit(jax.vmap(lambda k, s: source_refresh(k, prior, op, y, sigma, s, 0.3, config)))
        return step(keys, start)

    sigma_final = float(prior.sde.sigma(T_FINAL))
    after = moved(ExactGaussianLikelihoodScore())
    good = posterior_metrics(post, after, sigma_final)
    _report("refresh", good)
    assert _failures(good) == []
    bad = posterior_metrics(post, moved(TemperedLikelihoodScore(ExactGaussianLikelihoodScore(), 2.0)), sigma_final)
    _report("refresh x2", bad)
    assert "chi2" in _failures(bad)
    # not the identity: the whitened coordinates decorrelate from the start, most along the
    # best-measured modes (posterior sd << sigma_r) and least along prior-dominated ones
    z0, z1 = np.asarray(post.whiten(start)), np.asarray(post.whiten(after))
    corr = np.array([np.corrcoef(z0[:, i], z1[:, i])[0, 1] for i in range(z0.shape[1])])
    print(f"start/refreshed correlation per mode: min {corr.min():.2f}, median {np.median(corr):.2f}, max {corr.max():.2f}")
    assert np.median(corr) < 0.9
