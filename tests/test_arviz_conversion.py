"""Tests of the InferenceData conversion, figures and the joint CLI paths (sample, demo)."""

import json

import arviz as az
import jax
import jax.random as jr
import matplotlib
import numpy as np
import pytest
from blindlens.testing.gold_problem import LowRankExactGuidance, Problem
from numpyro.infer import MCMC

from blindlens import cli
from blindlens.arviz_conversion import (
    lens_parameter_names,
    nuisance_parameter_names,
    plot_joint_summary,
    plot_lens_pair,
    residual_chi2,
    summary_text,
    to_inference_data,
)
from blindlens.gibbs_kernel import BlindLensGibbs, GibbsDDRMConfig
from blindlens.lens_models import SIE, SIS, ExternalShear
from blindlens.lensing_operator import LensingOperator
from blindlens.numpyro_model import lens_from_values
from blindlens.observation import Observation
from blindlens.source_posterior import SourceSamplerConfig

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def run():
    problem = Problem(source_shape=(8, 8), image_shape=(12, 12), pixel_scale=0.15, rank=30, length_scale=1.5,
                      theta_E=0.6, free=("theta_E", "center_x"))
    kernel = BlindLensGibbs(
        problem.lens_model, problem.observation, problem.prior,
        source_config=SourceSamplerConfig(guidance=LowRankExactGuidance(basis=problem.basis), num_steps=20),
        warm_start=GibbsDDRMConfig(guidance=LowRankExactGuidance(basis=problem.basis), num_steps=20),
        source_grid=problem.source_grid,
    )
    mcmc = MCMC(kernel, num_warmup=10, num_samples=12, num_chains=2, chain_method=jax.vmap, progress_bar=False)
    mcmc.run(jr.key(0))
    return problem, kernel, mcmc


def test_inference_data_groups_coords_and_predictions(run, tmp_path):
    problem, kernel, mcmc = run
    idata = to_inference_data(mcmc, problem.observation, truth=problem.truth, chunk_size=5)
    for group in ("posterior", "sample_stats", "observed_data", "constant_data", "posterior_predictive", "log_likelihood"):
        assert group in idata
    post = idata.posterior
    assert post["source"].dims == ("chain", "draw", "source_y", "source_x")
    np.testing.assert_allclose(post["source_x"].values, np.asarray(problem.source_grid.x_coords), rtol=1e-6)
    np.testing.assert_allclose(idata.observed_data["image_y"].values, np.asarray(problem.image_grid.y_coords), rtol=1e-6)
    assert {"diverging", "lp", "acceptance_rate", "step_size", "n_steps", "tree_depth"} <= set(idata.sample_stats.data_vars)
    np.testing.assert_allclose(idata.constant_data["psf"].values, problem.psf)
    assert lens_parameter_names(idata) == ["theta_E", "center_x"]
    # model images are A_theta s of the stored draws (checked for one draw, by hand)
    c, d = 1, 7
    lens = SIS(theta_E=float(post["theta_E"][c, d]), center_x=float(post["center_x"][c, d]))
    op = LensingOperator(lens, problem.image_grid, problem.source_grid, psf=problem.psf)
    expected = np.asarray(op(post["source"].values[c, d]))
    pp = idata.posterior_predictive
    np.testing.assert_allclose(pp["model_image"].values[c, d], expected, rtol=1e-4, atol=1e-5)
    resid = (np.asarray(problem.observation.image) - expected) / problem.noise
    np.testing.assert_allclose(pp["normalized_residual"].values[c, d], resid, rtol=1e-3, atol=1e-3)
    chi2 = residual_chi2(idata)
    assert chi2.shape == (2, 12) and np.all(np.isfinite(chi2))
    assert json.loads(post.attrs["truth"]) == pytest.approx(problem.truth)
    # netCDF round trip, and the ArviZ functions users call first work on the lens parameters
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_allclose(back.posterior["theta_E"].values, post["theta_E"].values)
    summ = az.summary(back, var_names=lens_parameter_names(back))
    assert list(summ.index) == ["theta_E", "center_x"]
    az.plot_trace(back, var_names=["theta_E", "center_x"])
    az.plot_pair(back, var_names=["theta_E", "center_x"])


def test_dict_input_matches_mcmc_input(run):
    problem, kernel, mcmc = run
    a = to_inference_data(mcmc, problem.observation, predictive=False)
    b = to_inference_data(
        jax.device_get(mcmc.get_samples(group_by_chain=True)), problem.observation, kernel=kernel,
        sample_stats=jax.device_get(mcmc.get_extra_fields(group_by_chain=True)), predictive=False,
    )
    np.testing.assert_allclose(a.posterior["source"].values, b.posterior["source"].values)
    for name in ("lp", "energy", "step_size", "n_steps", "tree_depth", "diverging", "acceptance_rate"):
        np.testing.assert_allclose(a.sample_stats[name].values, b.sample_stats[name].values)
    with pytest.raises(ValueError, match="BlindLensGibbs"):
        to_inference_data({"theta_E": np.zeros((1, 2))}, problem.observation)


def test_container_matches_the_installed_arviz(run):
    """arviz < 1: InferenceData; arviz >= 1: xarray DataTree (from_dict(posterior=...) is gone there)."""
    problem, _, mcmc = run
    idata = to_inference_data(mcmc, problem.observation, predictive=False, log_likelihood=False)
    if int(az.__version__.split(".")[0]) < 1:
        assert isinstance(idata, az.InferenceData)
    else:
        import xarray as xr

        assert isinstance(idata, xr.DataTree)
    for group in ("posterior", "sample_stats", "observed_data", "constant_data"):
        assert group in idata
    assert "posterior_predictive" not in idata and "log_likelihood" not in idata


def _masked_kernel(problem):
    """The fixture's problem with a 3-pixel border and one corner masked (a kernel built on it)."""
    mask = np.ones(problem.observation.image.shape, bool)
    mask[:3] = False
    mask[-2:, -4:] = False
    obs = Observation(problem.observation.image, problem.noise, problem.psf, problem.image_grid.pixel_scale, mask=mask)
    kernel = BlindLensGibbs(
        problem.lens_model, obs, problem.prior,
        source_config=SourceSamplerConfig(guidance=LowRankExactGuidance(basis=problem.basis), num_steps=5),
        source_grid=problem.source_grid,
    )
    return obs, mask, kernel


def test_pointwise_log_likelihood_gives_loo_per_unmasked_pixel(run, tmp_path):
    """log_likelihood is per pixel (unmasked only): az.loo sees one observation per pixel, finite."""
    problem, _, mcmc = run
    obs, mask, kernel = _masked_kernel(problem)
    # the fixture's 12 draws per chain, three times over: PSIS (arviz >= 1) needs >= 5 tail draws
    draws = {k: np.concatenate([v] * 3, axis=1) for k, v in jax.device_get(mcmc.get_samples(group_by_chain=True)).items()}
    idata = to_inference_data(draws, obs, kernel=kernel, predictive=False, chunk_size=7)
    ll = idata.log_likelihood["image"]
    assert ll.dims == ("chain", "draw", "pixel") and ll.shape == (2, 36, int(mask.sum()))
    assert np.all(np.isfinite(ll.values))
    rows, cols = ll["pixel_row"].values, ll["pixel_col"].values
    assert np.all(mask[rows, cols]) and len(set(zip(rows, cols))) == mask.sum()
    np.testing.assert_allclose(ll["pixel_x"].values, np.asarray(problem.image_grid.x_coords)[cols], rtol=1e-6)
    # the pointwise terms sum to the joint model's log-likelihood of that draw
    model = kernel.joint_model
    c, d = 1, 5
    lens = lens_from_values(model.lens_model, {k: draws[k][c, d] for k in ("theta_E", "center_x")})
    total = float(model.log_likelihood(lens, draws["source"][c, d]))
    np.testing.assert_allclose(ll.values[c, d].sum(dtype=np.float64), total, rtol=1e-4)
    loo = az.loo(idata, pointwise=True)
    assert loo.n_data_points == int(mask.sum())
    assert np.all(np.isfinite(np.asarray(loo.pareto_k))) and np.asarray(loo.pareto_k).size == mask.sum()
    elpd = loo.elpd if hasattr(loo, "elpd") else loo["elpd_loo"]  # arviz >= 1 / 0.23
    assert np.isfinite(float(elpd))
    # and it survives the netCDF round trip
    idata.to_netcdf(str(tmp_path / "ll.nc"))
    back = az.from_netcdf(str(tmp_path / "ll.nc"))
    np.testing.assert_array_equal(back.log_likelihood["image"].values, ll.values)


def test_energy_in_sample_stats_and_float64_lens_draws(run):
    """sample_stats has the NUTS energy (az.plot_energy works); lens draws are float64, the source float32."""
    problem, kernel, mcmc = run
    idata = to_inference_data(mcmc, problem.observation, predictive=False, log_likelihood=False)
    energy = idata.sample_stats["energy"]
    assert energy.dims == ("chain", "draw") and np.all(np.isfinite(energy.values))
    az.plot_energy(idata)
    assert idata.posterior["theta_E"].dtype == np.float64 and idata.posterior["center_x"].dtype == np.float64
    assert idata.posterior["source"].dtype == np.float32
    # draws a few float32 ulps apart still plot with ArviZ's defaults
    draws = jax.device_get(mcmc.get_samples(group_by_chain=True))
    ulp = np.spacing(np.float32(0.6))
    draws["theta_E"] = (np.float32(0.6) + ulp * (np.arange(24) % 3).reshape(2, 12)).astype(np.float32)
    tiny = to_inference_data(draws, problem.observation, kernel=kernel, predictive=False, log_likelihood=False)
    assert tiny.posterior["theta_E"].dtype == np.float64
    az.plot_trace(tiny, var_names=["theta_E"])
    matplotlib.pyplot.close("all")


def test_summary_text_and_figures(run, tmp_path):
    problem, _, mcmc = run
    idata = to_inference_data(mcmc, problem.observation, truth=problem.truth)
    text = summary_text(idata)
    assert "theta_E" in text and "R-hat" in text and "chi^2/N" in text and "68%" in text
    assert plot_joint_summary(idata, tmp_path / "s.png").exists()
    assert plot_lens_pair(idata, tmp_path / "p.png").exists()


def test_a_sampled_grid_placement_is_stored_as_a_nuisance(run):
    """alpha_x, alpha_y of with_source_shift land in the posterior, are named nuisance, and the
    summary's R-hat verdict is over the lens parameters alone."""
    from blindlens import with_source_shift

    problem, _, mcmc = run
    plain = to_inference_data(mcmc, problem.observation, predictive=False, log_likelihood=False)
    assert json.loads(plain.posterior.attrs["blindlens_nuisance_sites"]) == []
    kernel = BlindLensGibbs(
        with_source_shift(problem.lens_model, problem.source_grid.pixel_scale), problem.observation, problem.prior,
        source_config=SourceSamplerConfig(guidance=LowRankExactGuidance(basis=problem.basis), num_steps=5),
        source_grid=problem.source_grid,
    )
    draws = {k: np.asarray(v) for k, v in jax.device_get(mcmc.get_samples(group_by_chain=True)).items()}
    draws["alpha_x"] = np.array([-0.05, 0.05])[:, None] + 0.001 * np.arange(12)[None, :]  # chains apart
    draws["alpha_y"] = np.zeros((2, 12)) + 0.001 * np.arange(12)[None, :] ** 0.5
    idata = to_inference_data(draws, problem.observation, kernel=kernel, predictive=False, log_likelihood=False)
    assert lens_parameter_names(idata) == ["theta_E", "center_x", "alpha_x", "alpha_y"]
    assert nuisance_parameter_names(idata) == ["alpha_x", "alpha_y"]
    text = summary_text(idata)
    assert "alpha_x" in text and "(alpha_x, alpha_y: nuisance, not judged)" in text
    judged = az.summary(idata, var_names=["theta_E", "center_x"], kind="diagnostics")["r_hat"].max()
    assert f"max R-hat {judged:.3f}" in text
    # sources and caustics in the source plane's frame: each draw moved by its placement
    from blindlens.posterior_figures import posterior_lens_curves, source_draws
    from blindlens.results.source_frame import placement_offsets, to_source_frame

    raw = draws["source"].reshape(24, *problem.source_grid.shape)
    offsets = np.stack([draws["alpha_x"].reshape(-1), draws["alpha_y"].reshape(-1)], axis=-1)
    np.testing.assert_array_equal(placement_offsets(idata), offsets)
    np.testing.assert_allclose(source_draws(idata), to_source_frame(raw, offsets, problem.source_grid), atol=1e-6)
    assert np.abs(source_draws(idata) - raw).max() > 1e-3 * np.abs(raw).max()
    np.testing.assert_array_equal(source_draws(plain), raw)
    shifted = posterior_lens_curves(idata, 3, lens_model=kernel.joint_model.lens_model, supersampling=2)
    fixed = posterior_lens_curves(plain, 3, lens_model=problem.lens_model, supersampling=2)
    assert sum(len(line) for line in fixed["draws"][0][1]) > 2  # caustics to compare
    for k, i in enumerate(fixed["index"]):
        for a, b in zip(shifted["draws"][k][1], fixed["draws"][k][1]):
            np.testing.assert_allclose(a, b, atol=1e-5)  # caustics moved back by +alpha
        for a, b in zip(shifted["draws"][k][0], fixed["draws"][k][0]):
            np.testing.assert_allclose(a, b, atol=1e-5)  # critical curves: a constant deflection has none


def test_demo_pipeline_with_a_gaussian_prior(tmp_path):
    """The demo code path end to end (tiny settings), with an analytic prior in place of the network."""
    problem = Problem(source_shape=(8, 8), image_shape=(16, 16), pixel_scale=0.1, rank=30, length_scale=1.5)
    source = np.asarray(problem.source) - np.asarray(problem.source).min()
    lens = SIE(theta_E=0.55, e1=0.05, e2=-0.03, center_x=0.0, center_y=0.0) + ExternalShear(gamma1=0.01, gamma2=0.0)
    summary = cli._demo(
        tmp_path, problem.prior, chains=1, warmup=3, draws=4, steps=6, image_shape=(16, 16), pixel_scale=0.1,
        source=source, source_pixel_scale=0.1, lens=lens, progress=False,
    )
    text = summary.read_text()
    assert "theta_E" in text and "gamma2" in text and "truth inside the 68% interval" in text
    for name in ("posterior.nc", "posterior_summary.png", "posterior_pair.png", "observation.npz"):
        assert (tmp_path / name).exists()
    idata = az.from_netcdf(str(tmp_path / "posterior.nc"))
    assert idata.posterior["theta_E"].shape == (1, 4)
    assert idata.log_likelihood["image"].shape == (1, 4, 16 * 16) and "energy" in idata.sample_stats
    # a completed run removes its checkpoint (blindlens.run_checkpoint)
    assert not list(tmp_path.glob("posterior.nc.ckpt*"))


def test_lens_model_specs():
    from blindlens.numpyro_model import epl_shear, sie_shear

    assert cli._load_lens_model("sie+shear") is sie_shear
    assert cli._load_lens_model("epl+shear") is epl_shear
    with pytest.raises(ValueError, match="FILE.py:function"):
        cli._load_lens_model("nfw")
    with pytest.raises(FileNotFoundError):
        cli._load_lens_model("/nonexistent/model.py:lens")


def test_cli_sample_joint_with_a_user_lens_model_file_and_resume(tmp_path, monkeypatch):
    """`blindlens sample OBS --lens-model FILE.py:function` end to end, then a resumed rerun."""
    from blindlens.observation import save_observation

    problem = Problem(source_shape=(8, 8), image_shape=(12, 12), pixel_scale=0.15, rank=30, length_scale=1.5,
                      theta_E=0.6)
    obs_path = save_observation(problem.observation, tmp_path / "obs.npz")
    model_file = tmp_path / "my_lens.py"
    model_file.write_text(
        "import numpyro, numpyro.distributions as dist\n"
        "from blindlens.lens_models import SIS\n"
        "def lens():\n"
        "    return SIS(theta_E=numpyro.sample('theta_E', dist.Uniform(0.4, 0.9)))\n"
    )
    monkeypatch.setattr(cli, "_load_source_prior", lambda spec: problem.prior)
    out = tmp_path / "post.nc"
    argv = ["sample", str(obs_path), "--out", str(out), "--lens-model", f"{model_file}:lens", "--chains", "1",
            "--warmup", "3", "--draws", "4", "--checkpoint-every", "2", "--steps", "30", "--warm-start-steps", "30",
            "--guidance", "pigdm", "--supersampling", "1", "--source-center", "0", "0"]
    assert cli.main(argv) == 0
    idata = az.from_netcdf(str(out))
    assert idata.posterior["theta_E"].shape == (1, 4)
    assert idata.log_likelihood["image"].shape == (1, 4, 12 * 12)
    assert (tmp_path / "post_summary.txt").exists() and (tmp_path / "post_pair.png").exists()
    first = idata.posterior["theta_E"].values.copy()
    del idata
    # the checkpoint holds all 4 draws: a rerun resumes and samples nothing new
    assert cli.main(argv) == 0
    np.testing.assert_array_equal(az.from_netcdf(str(out)).posterior["theta_E"].values, first)


def test_refresh_sigma_option_parses_auto_none_and_levels():
    import argparse

    assert cli._refresh_sigma_arg("auto") == "auto"
    assert cli._refresh_sigma_arg("None") is None
    assert cli._refresh_sigma_arg("0.1") == pytest.approx(0.1)
    for bad in ("-1", "0", "often"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._refresh_sigma_arg(bad)
