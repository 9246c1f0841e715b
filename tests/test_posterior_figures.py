"""Tests of the posterior figures: critical curves and caustics, source vs truth, corner plot contours."""

import json

import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr

from blindlens import arviz_conversion, cli, posterior_figures
from blindlens.arviz_conversion import grid_coords, make_inference_data
from blindlens.grid import PixelGrid
from blindlens.lens_models import SIS
from blindlens.posterior_figures import (
    SIGMA_MASSES,
    contour_levels,
    plot_critical_curves,
    plot_lens_pair,
    plot_source_comparison,
    posterior_lens_curves,
)

matplotlib.use("Agg")

IMAGE_GRID = PixelGrid((40, 40), 0.08)
SOURCE_GRID = PixelGrid((16, 16), 0.05)
TRUTH = {"theta_E": 1.0, "center_x": 0.05, "center_y": -0.04}


def sis_model():
    return SIS(
        theta_E=numpyro.sample("theta_E", dist.Uniform(0.3, 3.0)),
        center_x=numpyro.sample("center_x", dist.Normal(0.0, 0.2)),
        center_y=numpyro.sample("center_y", dist.Normal(0.0, 0.2)),
    )


def _blob(grid, sigma, x0=0.0, y0=0.0):
    x, y = (np.asarray(c) for c in grid.coordinates())
    return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))


def synthetic_idata(n_chain=2, n_draw=60, seed=0, spread=0.02):
    """A blindlens-shaped InferenceData of an SIS run (draws around TRUTH), built without sampling."""
    rng = np.random.default_rng(seed)
    shape = (n_chain, n_draw)
    lens = {k: v + spread * rng.standard_normal(shape) for k, v in TRUTH.items()}
    lens["center_y"] = lens["center_y"] + 0.5 * (lens["theta_E"] - TRUTH["theta_E"])  # a correlated pair
    source = _blob(SOURCE_GRID, 0.1) + 0.05 * rng.standard_normal((*shape, *SOURCE_GRID.shape))
    image = np.exp(-((np.hypot(*(np.asarray(c) for c in IMAGE_GRID.coordinates())) - 1.0) ** 2) / 0.02)
    coords = {**grid_coords(SOURCE_GRID, "source"), **grid_coords(IMAGE_GRID, "image")}
    cd = {"chain": np.arange(n_chain), "draw": np.arange(n_draw)}
    posterior = xr.Dataset(
        {**{k: (("chain", "draw"), v) for k, v in lens.items()},
         "source": (("chain", "draw", "source_y", "source_x"), source.astype(np.float32))},
        coords={**cd, "source_y": coords["source_y"], "source_x": coords["source_x"]},
    )
    posterior.attrs.update({
        "blindlens_lens_sites": json.dumps(list(TRUTH)), "source_pixel_scale": SOURCE_GRID.pixel_scale,
        "image_pixel_scale": IMAGE_GRID.pixel_scale, "truth": json.dumps(TRUTH),
    })
    image_coords = {"image_y": coords["image_y"], "image_x": coords["image_x"]}
    model = np.broadcast_to(image, (*shape, *image.shape)).astype(np.float32)
    return make_inference_data({
        "posterior": posterior,
        "observed_data": xr.Dataset({"image": (("image_y", "image_x"), image)}, coords=image_coords),
        "posterior_predictive": xr.Dataset(
            {"model_image": (("chain", "draw", "image_y", "image_x"), model),
             "normalized_residual": (("chain", "draw", "image_y", "image_x"),
                                     rng.standard_normal(model.shape).astype(np.float32))},
            coords={**cd, **image_coords}),
    })


def _written(path):
    assert path.exists() and path.stat().st_size > 10_000, path
    return path


def test_figures_are_written(tmp_path):
    idata = synthetic_idata()
    true_source = _blob(PixelGrid((40, 40), 0.025), 0.1)
    _written(plot_critical_curves(idata, tmp_path / "curves.png", truth=dict(TRUTH), num_draws=8, lens_model=sis_model))
    # a load_truth-style dict: the true lens as a Module, with the source and its pixel scale
    truth_file = {"lens": SIS(theta_E=1.0, center_x=0.05, center_y=-0.04), "source": true_source,
                  "source_pixel_scale": np.float64(0.025)}
    _written(plot_critical_curves(idata, tmp_path / "curves2.png", truth=truth_file, num_draws=3, lens_model=sis_model))
    _written(plot_source_comparison(idata, tmp_path / "source.png", true_source, 0.025))
    _written(plot_lens_pair(idata, tmp_path / "pair.png"))
    _written(plot_lens_pair(synthetic_idata(1, 12), tmp_path / "pair_few.png"))  # < 50 draws: points
    # the corner plot is re-exported where it used to live
    assert arviz_conversion.plot_lens_pair is plot_lens_pair
    with pytest.raises(ValueError, match="lens_model"):  # no shipped model has SIS's parameters
        plot_critical_curves(idata, tmp_path / "x.png")
    # the shipped model is found from the stored parameter names (what the CLI's --lens-model offers)
    from blindlens.numpyro_model import EPL_SHEAR_SITES, SIE_SHEAR_SITES, epl_shear, sie_shear

    assert posterior_figures._default_lens_model(SIE_SHEAR_SITES) is sie_shear
    assert posterior_figures._default_lens_model(EPL_SHEAR_SITES) is epl_shear


def test_contour_levels_exact_on_a_small_histogram():
    h = np.array([[1.0, 2.0], [3.0, 4.0]])  # total 10: densest first 4 (0.4), 3 (0.7), 2 (0.9), 1 (1.0)
    np.testing.assert_array_equal(contour_levels(h, [0.4, 0.5, 0.7, 0.95, 1.0]), [4.0, 3.0, 3.0, 1.0, 1.0])
    np.testing.assert_allclose(SIGMA_MASSES, [1 - np.exp(-0.5), 1 - np.exp(-2.0)])
    np.testing.assert_allclose(SIGMA_MASSES, [0.3935, 0.8647], atol=1e-4)
    with pytest.raises(ValueError):
        contour_levels(np.zeros((3, 3)))


def _fractions_inside(masses, n=400_000, seed=1):
    """Fraction of fresh 2-D Gaussian draws inside the regions that ``masses`` define on a histogram."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(-5, 5, 81)
    train, test = rng.standard_normal((2, n, 2))
    h, _, _ = np.histogram2d(train[:, 0], train[:, 1], bins=(edges, edges))
    levels = contour_levels(h, masses)
    ix, iy = (np.clip(np.searchsorted(edges, test[:, k]) - 1, 0, 79) for k in (0, 1))
    return np.array([np.mean(h[ix, iy] >= t) for t in levels])


def test_contour_levels_enclose_one_and_two_sigma_of_a_gaussian():
    """The filled regions hold 39.3% and 86.5% of independent draws (the 2-D 1- and 2-sigma masses)."""
    inside = _fractions_inside(SIGMA_MASSES)
    mc = np.sqrt(np.array(SIGMA_MASSES) * (1 - np.array(SIGMA_MASSES)) / 400_000)
    # tolerance: 4 MC standard errors + one bin's mass (the regions are unions of bins)
    np.testing.assert_allclose(inside, SIGMA_MASSES, atol=4 * mc.max() + 0.0025)
    # and the regions are the Gaussian's: 1- and 2-sigma circles, r = 1 and 2
    broken = _fractions_inside([0.68, 0.95])  # the 1-D sigma masses, a common mistake in 2-D
    assert np.all(np.abs(broken - np.array(SIGMA_MASSES)) > 0.08)


def test_critical_curves_of_sis_draws_are_einstein_circles():
    idata = synthetic_idata(n_chain=2, n_draw=30, spread=0.05)
    curves = posterior_lens_curves(idata, num_draws=5, lens_model=sis_model, supersampling=4)
    post = idata.posterior
    flat = {k: np.asarray(post[k].values).reshape(-1) for k in TRUTH}
    assert len(curves["draws"]) == 5 and curves["truth"] is None
    tol = IMAGE_GRID.pixel_scale / 4  # linear interpolation on the supersampled grid
    for i, (critical, caustics) in zip(curves["index"], curves["draws"]):
        points = np.concatenate(critical)
        r = np.hypot(points[:, 0] - flat["center_x"][i], points[:, 1] - flat["center_y"][i])
        np.testing.assert_allclose(r, flat["theta_E"][i], atol=tol)
        assert points.shape[0] > 50  # the whole circle
        # the caustic of an SIS is its centre
        np.testing.assert_allclose(np.concatenate(caustics), np.broadcast_to(
            [flat["center_x"][i], flat["center_y"][i]], np.concatenate(caustics).shape), atol=1e-3)
    median_points = np.concatenate(curves["median"][0])
    r = np.hypot(median_points[:, 0] - np.median(flat["center_x"]), median_points[:, 1] - np.median(flat["center_y"]))
    np.testing.assert_allclose(r, np.median(flat["theta_E"]), atol=tol)
    truth = posterior_lens_curves(idata, num_draws=1, lens_model=sis_model, truth=TRUTH)["truth"]
    points = np.concatenate(truth[0])
    np.testing.assert_allclose(np.hypot(points[:, 0] - 0.05, points[:, 1] + 0.04), 1.0, atol=tol)


def test_cli_checks_the_new_figure_paths_before_work(tmp_path):
    truth = tmp_path / "post_source_vs_truth.png"
    truth.write_bytes(b"not a truth file")
    with pytest.raises(ValueError, match="post_source_vs_truth.png"):
        cli._check_joint_outputs(tmp_path / "post.nc", None, inputs={"--truth": truth})
    (tmp_path / "post_curves.png").mkdir()
    with pytest.raises(ValueError, match="post_curves.png"):
        cli._check_joint_outputs(tmp_path / "post.nc", None, inputs={})
    assert posterior_figures.MIN_DRAWS_FOR_CONTOURS == 50


def test_cli_writes_curves_and_source_vs_truth(tmp_path, capsys):
    idata = synthetic_idata(2, 30)
    truth_file = {"lens": SIS(**TRUTH), "source": _blob(PixelGrid((40, 40), 0.025), 0.1),
                  "source_pixel_scale": np.float64(0.025), "source_center": np.zeros(2)}
    cli._write_joint_outputs(idata, tmp_path / "post.nc", None, TRUTH, title="t", lens_model=sis_model,
                             truth_file=truth_file)
    for name in ("post.nc", "post_summary.png", "post_pair.png", "post_curves.png", "post_source_vs_truth.png"):
        _written(tmp_path / name)
    cli._write_joint_outputs(idata, tmp_path / "plain.nc", None, None, title="t", lens_model=sis_model)
    _written(tmp_path / "plain_curves.png")
    assert not (tmp_path / "plain_source_vs_truth.png").exists()
