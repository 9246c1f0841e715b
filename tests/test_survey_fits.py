"""Survey FITS input (SCI/ERR/WHT/DQ/PSF, PSF and mask files, cut-outs), the survey writer, the
sky frame of observation files, and FITS products with world coordinates."""

import numpy as np
import pytest

from blindlens.grid import PixelGrid
from blindlens.observation import Observation, load_observation, save_observation
from blindlens.psf import gaussian_psf
from blindlens.survey_fits import (
    Cutout,
    load_survey_observation,
    save_psf_fits,
    save_survey_fits,
    write_fits_products,
)

fits = pytest.importorskip("astropy.io.fits")
from astropy.coordinates import SkyCoord  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

S = 0.05
_T = np.deg2rad(30.0)
EAST_LEFT = np.array([[np.cos(_T), -np.sin(_T)], [np.sin(_T), np.cos(_T)]]) @ np.diag([-S, S])
CENTRE = (150.1, 2.2)
KERNEL = gaussian_psf(0.1, S, 7)


def _frame(shape=(40, 44), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 0.1, size=shape)


def _write(tmp_path, name="frame.fits", image=None, **kwargs):
    image = _frame() if image is None else image
    kwargs.setdefault("pix2angle", EAST_LEFT)
    kwargs.setdefault("sky_center", CENTRE)
    return save_survey_fits(tmp_path / name, image, **kwargs), image


def test_sci_err_dq_psf_round_trip(tmp_path):
    err = np.full((40, 44), 0.1)
    err[0, 0] = 0.0  # no data there
    dq = np.zeros((40, 44), int)
    dq[5, 6] = 4  # a cosmic ray
    path, image = _write(tmp_path, err=err, dq=dq, psf=KERNEL * 3.0, exptime=1200.0)
    obs = load_observation(path)
    assert obs.noise_source == "ERR extension"
    np.testing.assert_allclose(obs.pix2angle, EAST_LEFT, rtol=1e-12, atol=1e-15)
    assert obs.pixel_scale == pytest.approx(S, rel=1e-12) and obs.center == (0.0, 0.0)
    mask = np.asarray(obs.mask)
    assert mask[5, 6] == 0 and mask[0, 0] == 0 and mask.sum() == image.size - 2
    np.testing.assert_array_equal(np.asarray(obs.image)[mask > 0], image.astype(np.float32)[mask > 0])
    np.testing.assert_allclose(np.asarray(obs.psf), KERNEL, rtol=1e-6)  # normalised to unit sum
    assert WCS(obs.wcs_header).has_celestial


def test_wht_is_inverse_variance_and_zero_weight_is_masked(tmp_path):
    wht = np.full((40, 44), 400.0)
    wht[3, :] = 0.0
    path, _ = _write(tmp_path, wht=wht, psf=KERNEL)
    obs = load_observation(path)
    assert "WHT" in obs.noise_source
    np.testing.assert_allclose(np.asarray(obs.noise)[np.asarray(obs.mask) > 0], 0.05, rtol=1e-6)
    assert np.asarray(obs.mask)[3].sum() == 0


def test_background_sigma_plus_poisson_from_exptime(tmp_path):
    path, image = _write(tmp_path, psf=KERNEL, exptime=500.0, header={"NOISESIG": 0.02})
    obs = load_survey_observation(path, poisson=True)
    np.testing.assert_allclose(np.asarray(obs.noise), np.sqrt(0.02**2 + np.maximum(image, 0) / 500.0), rtol=1e-6)
    assert "NOISESIG keyword" in obs.noise_source and "Poisson" in obs.noise_source and "500" in obs.noise_source
    wrong = np.sqrt(0.02**2 + np.maximum(image, 0) / 50.0)  # a wrong exposure time is detectable
    assert not np.allclose(np.asarray(obs.noise), wrong)
    assert load_survey_observation(path, noise=0.3).noise_source.startswith("noise= argument")


def test_separate_psf_and_mask_files(tmp_path):
    path, _ = _write(tmp_path, err=np.full((40, 44), 0.1))
    psf_path = save_psf_fits(tmp_path / "psf.fits", KERNEL, S)
    bad = np.zeros((40, 44), np.uint8)
    bad[10:12, 20:23] = 1
    fits.PrimaryHDU(bad).writeto(tmp_path / "mask.fits")
    obs = load_observation(path, psf=psf_path, mask=tmp_path / "mask.fits")
    np.testing.assert_allclose(np.asarray(obs.psf), KERNEL, rtol=1e-6)
    mask = np.asarray(obs.mask)
    assert mask.sum() == mask.size - 6 and mask[10:12, 20:23].sum() == 0  # nonzero = excluded


def test_pixel_and_sky_cutouts_carry_the_wcs(tmp_path):
    path, image = _write(tmp_path, image=_frame((60, 64)), err=np.full((60, 64), 0.1), psf=KERNEL)
    obs = load_survey_observation(path, cutout=Cutout((20, 24), pixel=(30.0, 25.0)))
    assert obs.shape == (20, 24)
    np.testing.assert_array_equal(np.asarray(obs.image), image[15:35, 18:42].astype(np.float32))
    target = SkyCoord(150.1002, 2.1999, unit="deg")
    obs = load_survey_observation(path, cutout=Cutout(21, sky=target))
    centre = WCS(obs.wcs_header).pixel_to_world(10, 10)
    assert centre.separation(target).arcsec < 0.5 * S * np.sqrt(2)
    # origin= puts (0, 0) at a sky position: the image centre is then offset from it
    origin = SkyCoord(150.1, 2.2, unit="deg")
    obs = load_survey_observation(path, cutout=Cutout(21, sky=target), origin=origin)
    east, north = origin.spherical_offsets_to(centre)
    np.testing.assert_allclose(obs.center, (east.arcsec, north.arcsec), atol=2e-3)


def test_observation_sky_frame_round_trips(tmp_path):
    base = Observation(_frame((10, 12)), 0.5, KERNEL, None, pix2angle=EAST_LEFT, noise_source="ERR extension")
    for suffix in (".npz", ".fits"):
        back = load_observation(save_observation(base, tmp_path / f"obs{suffix}"))
        np.testing.assert_allclose(back.pix2angle, EAST_LEFT, rtol=1e-15)
        assert back.noise_source == "ERR extension" and back.image_grid.pix2angle is not None
    back = load_observation(save_observation(base, tmp_path / "exact.npz"))
    assert back.pix2angle == base.pix2angle and back.pixel_scale == base.pixel_scale
    # a survey observation keeps its WCS through the simple formats
    path, _ = _write(tmp_path, err=np.full((40, 44), 0.1), psf=KERNEL)
    survey = load_observation(path)
    for suffix in (".npz", ".fits"):
        back = load_observation(save_observation(survey, tmp_path / f"survey{suffix}"))
        assert WCS(back.wcs_header).has_celestial and back.noise_source == "ERR extension"
        np.testing.assert_allclose(back.pix2angle, survey.pix2angle, rtol=1e-15)


def test_simple_pixscale_files_stay_axis_aligned(tmp_path):
    obs = Observation(_frame((8, 8)), 0.5, KERNEL, 0.1)
    back = load_observation(save_observation(obs, tmp_path / "simple.fits"))
    assert back.pix2angle is None and back.image_grid == PixelGrid((8, 8), 0.1)


# ------------------------------------------------------------------------------- bad inputs


def _hdus(tmp_path, primary_header=None, sci=None, sci_header=None, extra=()):
    primary = fits.PrimaryHDU()
    for k, v in (primary_header or {}).items():
        primary.header[k] = v
    hdus = [primary]
    if sci is not None:
        hdus.append(fits.ImageHDU(sci, header=fits.Header(sci_header or {}), name="SCI"))
    hdus.extend(extra)
    path = tmp_path / "bad.fits"
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def test_wcs_without_celestial_axes_is_refused(tmp_path):
    header = {"CTYPE1": "LINEAR", "CTYPE2": "LINEAR", "CDELT1": 0.05, "CDELT2": 0.05, "NOISESIG": 0.1}
    path = _hdus(tmp_path, sci=np.ones((8, 8)), sci_header=header, extra=[fits.ImageHDU(KERNEL, name="PSF")])
    with pytest.raises(ValueError, match="no celestial axes.*RA---TAN"):
        load_observation(path)


def test_psf_file_at_another_pixel_scale_is_refused(tmp_path):
    path, _ = _write(tmp_path, err=np.full((40, 44), 0.1))
    with pytest.raises(ValueError, match=r"refuses \(does not resample\)"):
        load_observation(path, psf=save_psf_fits(tmp_path / "psf.fits", KERNEL, S / 2))
    cd = fits.PrimaryHDU(KERNEL)  # a CD-matrix WCS at 0.025"/pixel
    cd.header.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CD1_1": -S / 2 / 3600, "CD2_2": S / 2 / 3600,
                      "CD1_2": 0.0, "CD2_1": 0.0, "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 4, "CRPIX2": 4})
    cd.writeto(tmp_path / "psf_cd.fits")
    with pytest.raises(ValueError, match="0.025"):
        load_observation(path, psf=tmp_path / "psf_cd.fits")
    load_observation(path, psf=save_psf_fits(tmp_path / "psf_ok.fits", KERNEL, S))  # the same scale is fine


def test_err_of_the_wrong_shape_is_refused(tmp_path):
    path, _ = _write(tmp_path, psf=KERNEL)
    with fits.open(path, mode="append") as hdul:
        hdul.append(fits.ImageHDU(np.ones((10, 10)), name="ERR"))
    with pytest.raises(ValueError, match=r"ERR extension has shape \(10, 10\).*\(40, 44\)"):
        load_observation(path)


def test_wht_nowhere_positive_is_refused(tmp_path):
    path, _ = _write(tmp_path, wht=np.zeros((40, 44)), psf=KERNEL)
    with pytest.raises(ValueError, match="WHT extension is <= 0 everywhere"):
        load_observation(path)


def test_no_image_is_refused(tmp_path):
    path = _hdus(tmp_path, extra=[fits.ImageHDU(KERNEL, name="PSF")])
    with pytest.raises(ValueError, match="no image found"):
        load_observation(path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(psf=KERNEL), "no noise found"),
        (dict(err=np.ones((40, 44))), "no PSF"),
    ],
)
def test_missing_noise_or_psf(tmp_path, kwargs, match):
    path, _ = _write(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=match):
        load_observation(path)


def test_sky_cutout_without_wcs_and_poisson_without_exptime(tmp_path):
    path = _hdus(tmp_path, sci=np.ones((20, 20)), sci_header={"PIXSCALE": 0.05, "NOISESIG": 0.1},
                 extra=[fits.ImageHDU(KERNEL, name="PSF")])
    assert load_observation(path).pix2angle is None
    with pytest.raises(ValueError, match="needs a celestial WCS"):
        load_survey_observation(path, cutout=Cutout(8, sky=(150.0, 2.0)))
    with pytest.raises(ValueError, match="exposure time"):
        load_survey_observation(path, poisson=True)


# --------------------------------------------------------------------------------- products


def test_fits_products_round_trip_with_world_coordinates(tmp_path):
    path, _ = _write(tmp_path, err=np.full((40, 44), 0.1), psf=KERNEL)
    obs = load_observation(path)
    rng = np.random.default_rng(1)
    images = {"model": rng.normal(size=obs.shape), "normalized_residual": rng.normal(size=obs.shape)}
    source_grid = PixelGrid((30, 34), 0.03, (0.12, -0.09))
    mean, sd = rng.normal(size=(30, 34)), rng.uniform(size=(30, 34))
    written = write_fits_products(tmp_path / "post", images, wcs_header=obs.wcs_header, image_grid=obs.image_grid,
                                  source_mean=mean, source_sd=sd, source_grid=source_grid)
    assert sorted(written) == ["model", "normalized_residual", "source_mean", "source_sd"]
    assert written["model"].name == "post_model.fits"
    for name, data in {**images, "source_mean": mean, "source_sd": sd}.items():
        with fits.open(written[name]) as hdul:
            np.testing.assert_allclose(hdul[0].data, data.astype(np.float32))
            header = hdul[0].header
        assert header["PRODUCT"] == name
    model_wcs = WCS(fits.getheader(written["model"]))
    np.testing.assert_allclose(model_wcs.pixel_scale_matrix * 3600, EAST_LEFT, atol=1e-12)
    # source plane: the grid centre (0.12" east, 0.09" south of the frame origin) on the sky
    src_wcs = WCS(fits.getheader(written["source_mean"]))
    origin = SkyCoord(*CENTRE, unit="deg")  # the image centre: obs.center == (0, 0)
    expected = origin.spherical_offsets_by(0.12 * _arcsec(), -0.09 * _arcsec())
    centre = src_wcs.pixel_to_world((34 - 1) / 2, (30 - 1) / 2)
    assert centre.separation(expected).arcsec < 1e-4
    mirrored = origin.spherical_offsets_by(-0.12 * _arcsec(), -0.09 * _arcsec())  # an RA-flipped reading
    assert centre.separation(mirrored).arcsec > 0.2
    # one source column to the right is one source pixel east
    east, north = centre.spherical_offsets_to(src_wcs.pixel_to_world((34 - 1) / 2 + 1, (30 - 1) / 2))
    np.testing.assert_allclose([east.arcsec, north.arcsec], [0.03, 0.0], atol=1e-6)


def test_fits_products_into_a_directory_without_wcs(tmp_path):
    grid = PixelGrid((6, 8), 0.1, (0.2, 0.0))
    out = write_fits_products(tmp_path, {"model": np.ones((6, 8))}, image_grid=grid)
    header = fits.getheader(out["model"])
    assert out["model"] == tmp_path / "model.fits" and header["PIXSCALE"] == 0.1 and header["CENTERX"] == 0.2
    with pytest.raises(ValueError, match="image-grid shape"):
        write_fits_products(tmp_path, {"model": np.ones((5, 8))}, image_grid=grid)
    with pytest.raises(ValueError, match="source_grid"):
        write_fits_products(tmp_path, {}, source_mean=np.ones((4, 4)))


def _arcsec():
    import astropy.units as u

    return u.arcsec
