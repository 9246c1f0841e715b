"""The survey path end to end, at toy size: ``blindlens simulate --layout survey`` writes SCI/ERR/DQ with a
rotated east-left WCS and a separate PSF file; ``blindlens sample --psf --lens-light sersic`` reads it,
samples lens + light + source and writes the FITS products with world coordinates."""

import numpy as np
import pytest
from blindlens.testing.gold_problem import Problem
from astropy.io import fits
from astropy.wcs import WCS

from blindlens import cli
from blindlens.pipeline import SampleOptions, sample_observation, truth_values
from blindlens.simulation import load_truth

LENS_TOML = """
[[profile]]
type = "SIE"
theta_E = 0.6
e1 = 0.05
e2 = -0.03
center_x = 0.02
center_y = -0.01

[[light]]
type = "SERSIC_ELLIPSE"
amp = 30.0
R_sersic = 0.3
n_sersic = 2.0
e1 = 0.05
e2 = 0.0
center_x = 0.02
center_y = -0.01
"""


@pytest.fixture(scope="module")
def survey_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("survey")
    (folder / "lens.toml").write_text(LENS_TOML)
    obs_path, psf_path = folder / "hst.fits", folder / "psf.fits"
    assert cli.main(["simulate", "--lens", str(folder / "lens.toml"), "--out", str(obs_path), "--layout", "survey",
                     "--rotation", "30", "--psf-out", str(psf_path), "--cosmic-rays", "2", "--image-shape", "16", "16",
                     "--pixel-scale", "0.15", "--psf-fwhm", "0.3", "--noise-sigma", "0.05"]) == 0
    problem = Problem(source_shape=(8, 8), image_shape=(16, 16), pixel_scale=0.15, rank=30, length_scale=1.5)
    options = SampleOptions(prior=problem.prior, chains=1, warmup=0, draws=2, steps=2, warm_start_steps=2,
                            warm_start_tries=1, lens_prefit="none", supersampling=1, checkpoint_every=2,
                            psf=str(psf_path), lens_light="sersic", truth=str(folder / "hst_truth.npz"))
    idata, _ = sample_observation(obs_path, folder / "post.nc", options, progress=False, figures=False)
    return folder, idata


def test_simulate_writes_the_survey_layout(survey_run):
    folder, _ = survey_run
    with fits.open(folder / "hst.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "DQ"]
        cd = WCS(hdul["SCI"].header).celestial.pixel_scale_matrix * 3600
        assert int(np.count_nonzero(hdul["DQ"].data)) >= 2
    # east left (RA flip), rotated by 30 degrees counter-clockwise in (x = east, y = north)
    a = np.deg2rad(30.0)
    expected = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag([-0.15, 0.15])
    np.testing.assert_allclose(cd, expected, atol=1e-9)
    assert "psf" not in [h.name.lower() for h in fits.open(folder / "hst.fits")]
    # the light is in the truth file and maps onto the lens-light sites
    truth = truth_values(load_truth(folder / "hst_truth.npz")["lens"], ("theta_E", "lens_light_amp", "lens_light_n_sersic"))
    assert truth == pytest.approx({"theta_E": 0.6, "lens_light_amp": 30.0, "lens_light_n_sersic": 2.0})


def test_sample_reads_the_survey_file_and_writes_fits_products(survey_run):
    folder, idata = survey_run
    post = idata.posterior
    assert {"theta_E", "lens_light_amp", "lens_light_R_sersic", "lens_light_center_y"} <= set(post.data_vars)
    assert post.attrs["noise_source"].startswith("ERR")
    assert "image_pix2angle" in post.attrs
    products = {p: folder / f"post_{p}.fits" for p in
                ("model", "lens_light", "lensed_source", "normalized_residual", "source_mean", "source_sd")}
    assert all(p.exists() for p in products.values())
    with fits.open(folder / "hst.fits") as hdul:
        sci_wcs, dq = WCS(hdul["SCI"].header).celestial, hdul["DQ"].data
    data = {p: fits.getdata(path) for p, path in products.items()}
    np.testing.assert_allclose(data["model"], data["lensed_source"] + data["lens_light"], rtol=1e-5, atol=1e-6)
    assert np.all(np.isnan(data["normalized_residual"][dq != 0]))
    assert np.all(np.isfinite(data["normalized_residual"][dq == 0]))
    assert data["source_mean"].shape == data["source_sd"].shape == (8, 8)
    # the image products carry the input's WCS: the same sky position for every pixel
    model_wcs = WCS(fits.getheader(products["model"])).celestial
    for pix in ((0, 0), (15, 3)):
        a, b = sci_wcs.pixel_to_world(*pix), model_wcs.pixel_to_world(*pix)
        assert a.separation(b).arcsec < 1e-6


def test_bad_survey_inputs_are_refused(tmp_path, capsys):
    assert cli.main(["simulate", "--out", str(tmp_path / "x.fits"), "--rotation", "10"]) != 0
    assert "need --layout survey" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lens-light"):
        SampleOptions(lens_light="gaussian").validate()


def test_cutout_options_cut_the_frame(survey_run):
    from blindlens.observation import load_observation
    from blindlens.pipeline import observation_options

    folder, _ = survey_run
    full = load_observation(folder / "hst.fits", psf=folder / "psf.fits")
    for centre in ({"cutout_sky": [150.1, 2.2]}, {"cutout_pixel": (7.5, 7.5)}):
        options = SampleOptions(cutout_size=8, **centre)
        options.validate()
        cut = load_observation(folder / "hst.fits", psf=folder / "psf.fits", **observation_options(options))
        assert cut.shape == (8, 8)
        np.testing.assert_array_equal(np.asarray(cut.image), np.asarray(full.image)[4:12, 4:12])
    with pytest.raises(ValueError, match="one cut-out centre"):
        SampleOptions(cutout_size=8, cutout_pixel=(1, 2), cutout_sky=(3, 4)).validate()
    with pytest.raises(ValueError, match="needs --cutout-size"):
        SampleOptions(cutout_pixel=(1, 2)).validate()
