"""Tests of blindlens.check_run (run diagnostics) on synthetic InferenceData, and the CLI's --strict."""

import json
import warnings

import arviz as az
import numpy as np
import pytest
import xarray as xr
from numpyro.diagnostics import split_gelman_rubin

import blindlens
from blindlens.run_diagnostics import BlindLensRunWarning, RunReport, check_run

SITES = ("theta_E", "e1")
SHAPE = (12, 12)  # N = 144 image pixels, 4 masked below
MASK = np.ones(SHAPE, bool)
MASK[0, :4] = False


def _idata(posterior, residual=None, diverging=None):
    """An InferenceData of ArviZ 0.23 or a DataTree of ArviZ >= 1 from plain arrays."""
    chains, draws = next(iter(posterior.values())).shape[:2]
    coords = {"chain": np.arange(chains), "draw": np.arange(draws)}
    dims = {k: ("chain", "draw", *[f"{k}_{i}" for i in range(v.ndim - 2)]) for k, v in posterior.items()}
    post = xr.Dataset({k: (dims[k], v) for k, v in posterior.items()}, coords=coords)
    post.attrs["blindlens_lens_sites"] = json.dumps([k for k in SITES if k in posterior])
    groups = {"posterior": post}
    if residual is not None:
        groups["posterior_predictive"] = xr.Dataset(
            {"normalized_residual": (("chain", "draw", "image_y", "image_x"), residual)}, coords=coords
        )
        groups["constant_data"] = xr.Dataset({"mask": (("image_y", "image_x"), MASK)})
    if diverging is not None:
        groups["sample_stats"] = xr.Dataset({"diverging": (("chain", "draw"), diverging)}, coords=coords)
    if int(az.__version__.split(".")[0]) >= 1:
        return xr.DataTree.from_dict(groups)
    return az.InferenceData(**groups)


def _well_mixed(rng, chains=4, draws=400, chi2_scale=1.0):
    posterior = {"theta_E": 1.0 + 0.01 * rng.standard_normal((chains, draws)),
                 "e1": 0.1 * rng.standard_normal((chains, draws)),
                 "source": rng.standard_normal((chains, draws, 4, 4))}
    resid = chi2_scale * rng.standard_normal((chains, draws, *SHAPE))
    resid[:, :, ~MASK] = np.nan
    return posterior, resid


def test_a_well_mixed_gaussian_run_passes_without_warnings():
    rng = np.random.default_rng(0)
    posterior, resid = _well_mixed(rng)
    idata = _idata(posterior, resid, diverging=np.zeros((4, 400), bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_run(idata)
    assert isinstance(report, RunReport)
    assert report.ok and report.warnings == () and report.worse_chains == ()
    assert report.num_pixels == 140 and report.num_divergent == 0
    assert report.max_rhat < 1.01 and report.min_ess > 100
    assert abs(report.chi2_sigma) < 5
    assert "all checks passed" in str(report) and "theta_E" in str(report)
    assert blindlens.check_run is check_run


def test_a_nuisance_site_apart_between_chains_is_reported_not_judged():
    """Chains at different source grid placements (alpha) but agreeing lenses pass; the same draws
    with alpha taken for a lens parameter (no nuisance attribute) fail on R-hat."""
    rng = np.random.default_rng(1)
    posterior, resid = _well_mixed(rng)
    offsets = np.array([-0.03, -0.01, 0.01, 0.03])[:, None]  # four chains, four placements
    posterior["alpha_x"] = offsets + 0.001 * rng.standard_normal((4, 400))
    idata = _idata(posterior, resid)
    idata.posterior.attrs["blindlens_lens_sites"] = json.dumps([*SITES, "alpha_x"])
    broken = _idata(posterior, resid)
    broken.posterior.attrs["blindlens_lens_sites"] = json.dumps([*SITES, "alpha_x"])
    idata.posterior.attrs["blindlens_nuisance_sites"] = json.dumps(["alpha_x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_run(idata)
    assert report.ok and report.lens_parameters == SITES and report.max_rhat < 1.01
    expected = float(az.rhat(posterior["alpha_x"], method="rank"))  # four placements inside one period
    assert report.nuisance_rhat["alpha_x"] == pytest.approx(expected, rel=0.05) and expected > 1.5
    assert "nuisance split R-hat" in str(report) and "alpha_x" in str(report)
    bad = check_run(broken, warn=False)
    assert not bad.ok and bad.max_rhat > 1.5 and "(alpha_x)" in bad.warnings[0]
    assert bad.nuisance_rhat == {}


def test_the_placement_r_hat_is_of_its_phase_within_a_pixel():
    """Chains a whole pixel apart in alpha sit at the same placement (R-hat ~1); chains half a pixel
    apart do not."""
    rng = np.random.default_rng(2)
    posterior, resid = _well_mixed(rng, chains=2)
    jitter = 0.002 * rng.standard_normal((2, 400))
    for centres, expect_mixed in (((-0.045, 0.005), True), ((-0.045, -0.02), False)):
        posterior["alpha_x"] = np.array(centres)[:, None] + jitter
        idata = _idata(posterior, resid)
        idata.posterior.attrs["blindlens_lens_sites"] = json.dumps([*SITES, "alpha_x"])
        idata.posterior.attrs["blindlens_nuisance_sites"] = json.dumps(["alpha_x"])
        idata.posterior.attrs["source_pixel_scale"] = 0.05
        rhat = check_run(idata, warn=False).nuisance_rhat["alpha_x"]
        assert float(split_gelman_rubin(posterior["alpha_x"])) > 5  # the raw values are far apart either way
        assert (rhat < 1.02) if expect_mixed else (rhat > 1.5), (centres, rhat)


def test_rhat_and_ess_are_the_summary_table_s_on_a_known_case():
    """Chains with shifted means: the reported R-hat is ArviZ's rank-normalised split R-hat (what the
    summary table prints) and the ESS its bulk ESS, and the shift is reported; the classic split
    R-hat of the same draws differs (check_run printed it before, beside the table's other number)."""
    rng = np.random.default_rng(1)
    posterior, resid = _well_mixed(rng, chains=2, draws=200)
    posterior["theta_E"] = posterior["theta_E"] + np.array([[0.0], [0.02]])  # 2 sd apart
    report = check_run(_idata(posterior, resid), warn=False)
    x = posterior["theta_E"]
    assert report.rhat["theta_E"] == pytest.approx(float(az.rhat(x, method="rank")), rel=1e-9)
    assert report.rhat["theta_E"] != pytest.approx(float(split_gelman_rubin(x)), rel=1e-3)
    assert report.ess["theta_E"] == pytest.approx(float(az.ess(x, method="bulk")), rel=0.05)
    assert report.rhat["theta_E"] > 1.1
    assert not report.ok and any("R-hat" in w and "run longer" in w for w in report.warnings)
    # an exact hand computation on a tiny case (Vehtari et al. 2021): split halves, normal scores of
    # the pooled ranks (ties averaged), R-hat (BDA3 eq. 11.4) of those and of the folded draws' scores
    from scipy.special import ndtri
    from scipy.stats import rankdata

    y = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    halves = np.array([[0.0, 1.0], [2.0, 3.0], [1.0, 2.0], [3.0, 4.0]])
    n = 2

    def rhat(h):
        w = h.var(axis=1, ddof=1).mean()
        b = n * h.mean(axis=1).var(ddof=1)
        return np.sqrt(((n - 1) / n * w + b / n) / w)

    def scores(h):
        return ndtri((rankdata(h).reshape(h.shape) - 0.375) / (h.size + 0.25))

    expected = max(rhat(scores(halves)), rhat(scores(np.abs(halves - np.median(halves)))))
    post = {"theta_E": np.stack([y[0], y[1]]), "e1": rng.standard_normal((2, 4))}
    assert check_run(_idata(post), warn=False).rhat["theta_E"] == pytest.approx(expected, rel=1e-6)


def test_a_chain_in_a_worse_mode_is_flagged_and_listed():
    rng = np.random.default_rng(2)
    posterior, resid = _well_mixed(rng, chains=3, draws=200)
    resid[1] *= np.sqrt(2.0)  # chain 1: chi^2/N 2, total chi^2 worse by ~140 > 5 sd (sd = sqrt(2N) = 17)
    with pytest.warns(BlindLensRunWarning, match="chain 1 is in a worse mode"):
        report = check_run(_idata(posterior, resid))
    assert report.worse_chains == (1,) and report.kept_chains == (0, 2)
    assert report.chain_chi2_per_pixel[1] == pytest.approx(2.0, abs=0.1)
    assert "chain 1 is in a worse mode (chi^2/N 1.9" in str(report)
    assert "idata.sel(chain=[0, 2]) keeps the others" in str(report)
    # what the message tells a user to run leaves the flagged chain out, and only it
    kept = _idata(posterior, resid).sel(chain=list(report.kept_chains))
    assert check_run(kept, warn=False).worse_chains == ()
    assert kept.posterior.sizes["chain"] == 2
    # the same chains without the shift: none flagged (the control)
    posterior, resid = _well_mixed(np.random.default_rng(2), chains=3, draws=200)
    control = check_run(_idata(posterior, resid), warn=False)
    assert control.worse_chains == () and control.kept_chains == (0, 1, 2)


def test_a_chain_that_leaves_the_fit_late_is_flagged_though_its_median_is_fine():
    rng = np.random.default_rng(3)
    posterior, resid = _well_mixed(rng, chains=3, draws=200)
    resid[1, 150:] *= np.sqrt(2.0)  # chain 1's last 50 draws jump to chi^2/N 2: its median stays ~1
    with pytest.warns(BlindLensRunWarning, match=r"chain 1 left the fit for \d+ of 200 draws \(first at draw 15\d"):
        report = check_run(_idata(posterior, resid))
    # N = 140 pixels: a draw at chi^2/N 2 is 5.9 sd above the threshold's centre, so nearly all 50 count
    assert report.worse_chains == () and set(report.chains_with_worse_draws) == {1}
    assert 45 <= report.chains_with_worse_draws[1] <= 50
    assert report.chain_chi2_per_pixel[1] == pytest.approx(1.0, abs=0.1)
    # below the 5% line (one bad draw in 200) it is not reported
    posterior, resid = _well_mixed(np.random.default_rng(3), chains=3, draws=200)
    resid[1, 150] *= np.sqrt(2.0)
    report = check_run(_idata(posterior, resid), warn=False)
    assert report.ok and report.chains_with_worse_draws == {}


def test_misfit_divergences_and_nonfinite_sources_are_reported():
    rng = np.random.default_rng(3)
    posterior, resid = _well_mixed(rng, chains=2, draws=100)
    posterior["source"][0, 5, 1, 1] = np.inf
    posterior["source"][1, 7] = np.nan
    div = np.zeros((2, 100), bool)
    div[0, :3] = True
    report = check_run(_idata(posterior, 1.3 * resid, diverging=div), warn=False)
    assert report.nonfinite == {"source": 17}
    assert report.num_divergent == 3 and report.num_transitions == 200
    assert report.chi2_per_pixel == pytest.approx(1.69, abs=0.05) and report.chi2_sigma > 5
    text = "\n".join(report.warnings)
    assert "non-finite values in 'source'" in text and "3 of 200 lens transitions diverged" in text
    assert "does not fit the data" in text
    assert not report.ok and str(report).count("WARNING:") == len(report.warnings) == 3
    # a run too short for R-hat says so instead of failing
    short = {k: v[:, :3] for k, v in posterior.items()}
    report = check_run(_idata(short), warn=False)
    assert any("at least 4" in w for w in report.warnings)


def test_fixed_lens_idata_skips_mixing_checks():
    rng = np.random.default_rng(4)
    _, resid = _well_mixed(rng, chains=1, draws=16)
    report = check_run(_idata({"source": rng.standard_normal((1, 16, 4, 4))}, resid), warn=False)
    assert report.ok and report.lens_parameters == () and report.max_rhat is None
    assert "fixed lens" in str(report)


def test_cli_strict_exit_code_on_a_misfit(tmp_path, monkeypatch):
    """`blindlens sample --fixed-lens` on data whose noise is 5x the stated one: the report warns and
    the exit code is 0, or 3 with --strict."""
    import jax.random as jr

    from blindlens import cli
    from blindlens.diffusion_sde import VESDE
    from blindlens.gaussian_prior import GaussianSourcePrior
    from blindlens.lens_config import save_lens_config
    from blindlens.lens_models import SIS
    from blindlens.observation import Observation, save_observation
    from blindlens.psf import gaussian_psf
    from blindlens.source_posterior import fixed_lens_operator

    prior = GaussianSourcePrior.squared_exponential((8, 8), 1.5, VESDE(1e-3, 10.0), 0.1, amplitude=0.5, jitter=1e-3)
    monkeypatch.setattr(cli, "_load_source_prior", lambda spec: prior)
    lens = SIS(0.5, 0.0, 0.0)
    blank = Observation(np.zeros((16, 16)), 0.01, gaussian_psf(0.15, 0.08), 0.08)
    op = fixed_lens_operator(blank, lens, prior)
    image = np.asarray(op(prior.sample(jr.key(0), 1)[0])) + 0.05 * np.asarray(jr.normal(jr.key(1), (16, 16)))
    obs_path = save_observation(Observation(image, 0.01, blank.psf, 0.08), tmp_path / "obs.npz")
    lens_path = save_lens_config(lens, tmp_path / "lens.toml")
    argv = ["sample", str(obs_path), "--fixed-lens", str(lens_path), "--num-samples", "4", "--steps", "20",
            "--guidance", "calibrated"]
    assert cli.main([*argv, "--out", str(tmp_path / "a.nc")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "b.nc"), "--strict"]) == 3


def _blob_source(rng, centre, chains=2, draws=50, side=32, noise=0.02):
    """Draws of a Gaussian blob (peak 1, sd 3 pixels) at ``centre`` (row, col) on a ``side``-pixel grid."""
    y, x = np.mgrid[:side, :side]
    blob = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * 3.0**2))
    return blob + noise * rng.standard_normal((chains, draws, side, side))


def test_a_source_that_reaches_its_grid_edge_is_reported():
    rng = np.random.default_rng(7)
    posterior, resid = _well_mixed(rng, chains=2, draws=50)
    posterior["source"] = _blob_source(rng, (16, 16))
    report = check_run(_idata(posterior, resid), warn=False)
    # a centred blob: no border pixel above its posterior sd (noise only there)
    assert report.source_edge_fraction == 0.0 and not any("edge" in w for w in report.warnings)
    posterior["source"] = _blob_source(rng, (16, 2))  # its centre 2 pixels from the left edge
    report = check_run(_idata(posterior, resid), warn=False)
    assert report.source_edge_fraction == pytest.approx(np.exp(-4 / 18), abs=0.02)  # the border: column x = 0
    assert any("reaches its grid's edge" in w and "--source-center" in w and "--source-size 48" in w
               for w in report.warnings)  # 1.5 x the 32-pixel side
    assert "source at its grid's edge" in str(report)
    # a grid too small to have a border apart from the galaxy is not judged
    posterior["source"] = _blob_source(rng, (4, 1), side=8)
    assert check_run(_idata(posterior, resid), warn=False).source_edge_fraction is None
