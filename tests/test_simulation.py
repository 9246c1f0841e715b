"""Simulator, truth files and the `simulate` / `plot-observation` CLI subcommands."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blindlens.cli import main
from blindlens.grid import PixelGrid
from blindlens.lens_config import load_lens_config, lens_to_config
from blindlens.lensing_operator import lensed_image
from blindlens.observation import load_observation
from blindlens.psf import gaussian_psf
from blindlens.simulation import (
    example_lens_path,
    example_source_path,
    load_source,
    load_truth,
    simulate_observation,
    truth_path_for,
)


def _source(n=32, scale=0.1):
    xs = (np.arange(n) - (n - 1) / 2) * scale
    x, y = np.meshgrid(xs, xs)
    return np.exp(-((x - 0.1) ** 2 + (y + 0.05) ** 2 / 0.5) / 0.3**2)


def test_simulate_noise_statistics_and_noiseless_model():
    lens = load_lens_config(example_lens_path())
    src = _source()
    sigma = 0.02
    obs, clean = simulate_observation(
        lens, src, 0.1, key=jax.random.key(1), image_shape=(64, 64), pixel_scale=0.08, psf_fwhm=0.16,
        noise_sigma=sigma, supersampling=2,
    )
    expected = lensed_image(lens, jnp.asarray(src, jnp.float32), PixelGrid((64, 64), 0.08), PixelGrid((32, 32), 0.1),
                            psf=gaussian_psf(0.16, 0.08), supersampling=2)
    np.testing.assert_array_equal(np.asarray(clean), np.asarray(expected))
    resid = np.asarray(obs.image) - np.asarray(clean)
    n = resid.size
    # Monte-Carlo error of the sample std is sigma / sqrt(2n); allow 4 of them
    tol = 4 * sigma / np.sqrt(2 * n)
    assert abs(resid.std() - sigma) < tol
    assert abs(resid.mean()) < 4 * sigma / np.sqrt(n)
    assert abs(resid.std() - 1.1 * sigma) > tol  # the test can tell a 10% wrong sigma
    np.testing.assert_allclose(np.asarray(obs.noise), sigma)
    # deterministic in the key
    obs2, _ = simulate_observation(lens, src, 0.1, key=jax.random.key(1), image_shape=(64, 64), pixel_scale=0.08,
                                   psf_fwhm=0.16, noise_sigma=sigma, supersampling=2)
    np.testing.assert_array_equal(np.asarray(obs.image), np.asarray(obs2.image))
    with pytest.raises(ValueError, match="noise_sigma"):
        simulate_observation(lens, src, 0.1, key=jax.random.key(0), noise_sigma=0.0)


def test_cli_simulate_and_plot(tmp_path, capsys):
    src_path = tmp_path / "src.npy"
    np.save(src_path, _source())
    out = tmp_path / "obs.fits"
    fig = tmp_path / "sim.png"
    rc = main([
        "simulate", "--lens", str(example_lens_path()), "--source", str(src_path), "--source-pixel-scale", "0.1",
        "--out", str(out), "--image-shape", "48", "50", "--pixel-scale", "0.1", "--psf-fwhm", "0.2",
        "--noise-sigma", "0.05", "--supersampling", "1", "--seed", "3", "--plot", str(fig),
    ])
    assert rc == 0
    obs = load_observation(out)
    assert obs.shape == (48, 50) and obs.pixel_scale == 0.1
    truth = load_truth(truth_path_for(out))
    assert truth_path_for(out).name == "obs_truth.npz"
    assert lens_to_config(truth["lens"]) == lens_to_config(load_lens_config(example_lens_path()))
    np.testing.assert_array_equal(truth["source"], _source())
    resid = np.asarray(obs.image) - truth["noiseless_image"]
    assert 0.04 < resid.std() < 0.06 and truth["noiseless_image"].max() > 0.5
    assert fig.stat().st_size > 10_000
    fig2 = tmp_path / "obs.png"
    assert main(["plot-observation", str(out), "--out", str(fig2), "--truth", str(truth_path_for(out))]) == 0
    assert fig2.stat().st_size > 10_000


def test_cli_errors(tmp_path, capsys):
    src_path = tmp_path / "src.npy"
    np.save(src_path, _source())
    rc = main(["simulate", "--source", str(src_path), "--out", str(tmp_path / "o.fits")])
    assert rc == 2 and "source-pixel-scale" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        load_source(bad)
    np.save(bad, np.ones(4))
    with pytest.raises(ValueError, match="2-D"):
        load_source(bad)


@pytest.mark.skipif(not example_source_path().exists(), reason="bundled example source not shipped yet")
def test_cli_simulate_with_bundled_defaults(tmp_path):
    out = tmp_path / "example.fits"
    assert main(["simulate", "--out", str(out), "--image-shape", "48", "48", "--pixel-scale", "0.1",
                 "--psf-fwhm", "0.2", "--supersampling", "1"]) == 0
    truth = load_truth(truth_path_for(out))
    assert truth["source"].shape == (64, 64) and float(truth["source_pixel_scale"]) == 0.05
    assert load_observation(out).shape == (48, 48)
