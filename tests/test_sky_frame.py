"""Sky-frame grids (a rotated, east-left WCS) against lenstronomy's ``transform_pix2angle``.

lenstronomy is an oracle here only. The same lens and source are imaged by lenstronomy on a grid
rotated by 30 deg with the RA flip (a standard east-left CD matrix) and by blindlens; a mirrored
reading (no RA flip) and an unrotated reading of the same pixels must fail the comparison.
"""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from blindlens.grid import PixelGrid
from blindlens.lens_models import SIE, SIS, CompositeLens, ExternalShear, critical_curves_and_caustics
from blindlens.lensing_operator import LensingOperator, _bilinear_stencil
from blindlens.observation import Observation
from blindlens.parametric_prefit import SersicImager
from blindlens.psf import gaussian_psf

LENS = dict(theta_E=0.9, e1=0.12, e2=-0.08, center_x=0.06, center_y=-0.04, gamma1=0.04, gamma2=0.025)
SOURCE = dict(R_sersic=0.15, n_sersic=1.5, e1=0.2, e2=0.05, center_x=0.1, center_y=0.06)
N, D, K = 40, 0.06, 2  # image pixels per side, arcsec/pixel, supersampling


def _rotation(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


EAST_LEFT = _rotation(30.0) @ np.diag([-D, D])  # CD * 3600 of a north-up image rotated by 30 deg
READINGS = {
    "mirrored (no RA flip)": _rotation(30.0) @ np.diag([D, D]),
    "unrotated (CD ignored)": None,
}


def _lens():
    p = LENS
    return CompositeLens((SIE(p["theta_E"], p["e1"], p["e2"], p["center_x"], p["center_y"]),
                          ExternalShear(p["gamma1"], p["gamma2"])))


def _lenstronomy_image(pix2angle, light, kw_source, kernel):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    ra0, dec0 = -pix2angle @ np.array([(N - 1) / 2, (N - 1) / 2])  # (x, y) = (0, 0) at the image centre
    data = ImageData(image_data=np.zeros((N, N)), transform_pix2angle=pix2angle, ra_at_xy_0=ra0, dec_at_xy_0=dec0)
    psf = PSF(psf_type="PIXEL", kernel_point_source=kernel) if kernel is not None else PSF(psf_type="NONE")
    model = ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"]), source_model_class=LightModel([light]),
                       kwargs_numerics={"supersampling_factor": K, "supersampling_convolution": False})
    p = LENS
    kw_lens = [{k: p[k] for k in ("theta_E", "e1", "e2", "center_x", "center_y")},
               {"gamma1": p["gamma1"], "gamma2": p["gamma2"], "ra_0": 0.0, "dec_0": 0.0}]
    return model.image(kw_lens, [kw_source]) / abs(np.linalg.det(pix2angle))  # flux/pixel -> surface brightness


INNER = (slice(5, -5), slice(5, -5))  # lenstronomy convolves within the image only


def _max_rel(a, b):
    return float(np.abs(np.asarray(a, float)[INNER] - b[INNER]).max() / np.abs(b[INNER]).max())


def test_lensed_sersic_on_rotated_east_left_grid_matches_lenstronomy(x64):
    pytest.importorskip("lenstronomy")
    kernel = gaussian_psf(2.2 * D, D, 7)
    ref = _lenstronomy_image(EAST_LEFT, "SERSIC_ELLIPSE", dict(amp=1.0, **SOURCE), kernel)
    noise = np.ones((N, N))

    def ours(pix2angle):
        obs = Observation(np.zeros((N, N)), noise, kernel, D, pix2angle=pix2angle)
        return np.asarray(SersicImager(obs, K)(_lens(), 1.0, **SOURCE))

    err = _max_rel(ours(EAST_LEFT), ref)
    assert err < 1e-6, err
    for name, wrong in READINGS.items():
        bad = _max_rel(ours(wrong), ref)
        assert bad > 1000 * max(err, 1e-6), (name, bad)  # a convention error is caught with a wide margin


def _pixelated_source(n=48, ds=0.03):
    xs = (np.arange(n) - (n - 1) / 2) * ds
    x, y = np.meshgrid(xs, xs)
    return (np.exp(-((x - 0.12) ** 2 / 0.12**2 + (y - 0.05) ** 2 / 0.07**2))
            + 0.6 * np.exp(-((x + 0.15) ** 2 + (y + 0.1) ** 2) / 0.05**2)), ds


@pytest.mark.parametrize("with_psf", [False, True])
def test_lensing_operator_on_rotated_grid_matches_lenstronomy_interpol(with_psf):
    pytest.importorskip("lenstronomy")
    src, ds = _pixelated_source()
    kernel = gaussian_psf(2.0 * D, D, 7) if with_psf else None
    ref = _lenstronomy_image(EAST_LEFT, "INTERPOL", dict(image=src, amp=1.0, center_x=0.0, center_y=0.0,
                                                         phi_G=0.0, scale=ds), kernel)
    source_grid = PixelGrid(src.shape, ds)

    def ours(pix2angle):
        grid = PixelGrid((N, N), D, pix2angle=pix2angle)
        op = LensingOperator(_lens(), grid, source_grid, psf=kernel, supersampling=K)
        return op(jnp.asarray(src, jnp.float32))

    out = ours(EAST_LEFT)
    assert out.dtype == jnp.float32
    err = _max_rel(out, ref)
    assert err < 1e-5, err
    for name, wrong in READINGS.items():
        bad = _max_rel(ours(wrong), ref)
        assert bad > 0.05 and bad > 1000 * err, (name, bad)


def test_survey_wcs_reading_matches_lenstronomy(tmp_path, x64):
    """A rotated east-left CD matrix written to FITS and read back gives lenstronomy's image."""
    pytest.importorskip("lenstronomy")
    from blindlens.observation import load_observation
    from blindlens.survey_fits import save_survey_fits

    kernel = gaussian_psf(2.2 * D, D, 7)
    ref = _lenstronomy_image(EAST_LEFT, "SERSIC_ELLIPSE", dict(amp=1.0, **SOURCE), kernel)
    path = save_survey_fits(tmp_path / "lens.fits", ref, pix2angle=EAST_LEFT, sky_center=(150.1, 2.2),
                            err=np.full((N, N), 0.01), psf=kernel)
    obs = load_observation(path)
    np.testing.assert_allclose(obs.pix2angle, EAST_LEFT, rtol=1e-12, atol=1e-15)
    ours = np.asarray(SersicImager(obs, K)(_lens(), 1.0, **SOURCE))
    assert _max_rel(ours, ref) < 1e-6


def test_wcs_x_is_east_and_y_is_north(tmp_path):
    """Independently of lenstronomy: (x, y) = (+1", 0) is 1" east on the sky, (0, +1") 1" north."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs import WCS

    from blindlens.observation import load_observation
    from blindlens.survey_fits import save_survey_fits

    centre = SkyCoord(150.1, 62.2, unit="deg")  # high declination: a missing cos(dec) would show
    path = save_survey_fits(tmp_path / "f.fits", np.ones((N, N)), pix2angle=EAST_LEFT, sky_center=centre,
                            err=np.ones((N, N)), psf=gaussian_psf(2 * D, D, 5))
    obs = load_observation(path)
    grid, wcs = obs.image_grid, WCS(obs.wcs_header)
    for (x, y), (east, north) in (((1.0, 0.0), (1.0, 0.0)), ((0.0, 1.0), (0.0, 1.0)), ((0.3, -0.7), (0.3, -0.7))):
        i, j = np.array([(N - 1) / 2, (N - 1) / 2]) + np.linalg.solve(np.asarray(grid.pix2angle), [x, y])
        d_east, d_north = centre.spherical_offsets_to(wcs.pixel_to_world(i, j))
        assert abs(d_east.arcsec - east) < 2e-3 and abs(d_north.arcsec - north) < 2e-3
        # the pixel the mirrored reading would use is elsewhere on the sky
        i_m, j_m = np.array([(N - 1) / 2, (N - 1) / 2]) + np.linalg.solve(READINGS["mirrored (no RA flip)"], [x, y])
        d_east_m, _ = centre.spherical_offsets_to(wcs.pixel_to_world(i_m, j_m))
        assert abs(d_east_m.arcsec - east) > 0.1 or east == 0.0


# ------------------------------------------------------------------------- grid behaviour


def test_none_and_diagonal_pix2angle_give_bit_identical_stencils():
    plain = PixelGrid((23, 30), 0.07, (0.11, -0.05))
    diagonal = PixelGrid((23, 30), 0.07, (0.11, -0.05), pix2angle=[[0.07, 0.0], [0.0, 0.07]])
    assert diagonal.pixel_scale == plain.pixel_scale
    source_grid = PixelGrid((20, 20), 0.05)
    for k, pad in ((1, (0, 0)), (3, (4, 2))):
        a = _bilinear_stencil(_lens(), plain, source_grid, k, pad)
        b = _bilinear_stencil(_lens(), diagonal, source_grid, k, pad)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        for u, v in zip(plain.subpixel_coordinates(k, pad), diagonal.subpixel_coordinates(k, pad)):
            np.testing.assert_array_equal(u, v)
    # the shared helper is the pre-existing arithmetic for plain grids
    xs = 0.11 + (np.arange(30 * 3 + 12) - (30 * 3 + 12 - 1) / 2) * (0.07 / 3)
    np.testing.assert_array_equal(plain.subpixel_coordinates(3, (4, 2))[0][0], xs)
    np.testing.assert_array_equal(np.asarray(plain.x_coords), np.asarray(diagonal.x_coords))
    assert plain.extent == diagonal.extent


def test_rotated_grid_geometry():
    grid = PixelGrid((6, 8), None, (0.2, -0.1), EAST_LEFT)
    assert grid.pixel_scale == pytest.approx(D, rel=1e-12) and not grid.is_axis_aligned
    x, y = grid.subpixel_coordinates()
    np.testing.assert_allclose(x.mean(), 0.2, atol=1e-12)
    np.testing.assert_allclose(y.mean(), -0.1, atol=1e-12)
    # one column to the right moves by the first column of pix2angle, one row up by the second
    np.testing.assert_allclose([x[0, 1] - x[0, 0], y[0, 1] - y[0, 0]], EAST_LEFT[:, 0], atol=1e-14)
    np.testing.assert_allclose([x[1, 0] - x[0, 0], y[1, 0] - y[0, 0]], EAST_LEFT[:, 1], atol=1e-14)
    cx, cy = grid.coordinates()
    np.testing.assert_allclose(np.asarray(cx), x, atol=1e-6)
    # supersampling keeps the transform: the sub-grid's centres are the supersampled centres
    fine = grid.supersampled(3)
    np.testing.assert_allclose(np.asarray(fine.pix2angle), EAST_LEFT / 3, rtol=1e-14)
    for a, b in zip(fine.subpixel_coordinates(), grid.subpixel_coordinates(3)):
        np.testing.assert_allclose(a, b, atol=1e-13)
    for name in ("x_coords", "y_coords", "extent"):
        with pytest.raises(ValueError, match="axis-aligned"):
            getattr(grid, name)
    corners_x, _ = grid.pixel_corners()
    assert corners_x.shape == (7, 9) and grid.bounds[0] == corners_x.min()


def test_mirrored_axis_aligned_grid_has_reversed_extent():
    grid = PixelGrid((4, 6), None, pix2angle=np.diag([-0.1, 0.1]))
    assert grid.is_axis_aligned and grid.extent == pytest.approx((0.3, -0.3, -0.2, 0.2))
    assert float(grid.x_coords[0]) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "pix2angle, pixel_scale, match",
    [
        ([[0.05, 0.1], [0.1, 0.2]], None, "singular"),
        ([[0.05, 0.0], [0.0, 0.06]], None, "non-square"),
        ([[0.05, 0.02], [0.0, 0.05]], None, "non-square"),
        ([[0.05, 0.0], [0.0, np.nan]], None, "finite 2x2"),
        ([[0.05, 0.0], [0.0, 0.05]], 0.06, "disagrees"),
        (None, None, "pixel_scale"),
    ],
)
def test_bad_pix2angle(pix2angle, pixel_scale, match):
    with pytest.raises(ValueError, match=match):
        PixelGrid((4, 4), pixel_scale, pix2angle=pix2angle)


def test_critical_curves_on_rotated_grid():
    lens = SIS(theta_E=0.8)
    for grid in (PixelGrid((N, N), D), PixelGrid((N, N), None, pix2angle=EAST_LEFT)):
        critical, caustics = critical_curves_and_caustics(lens, grid, supersampling=2)
        r = np.hypot(*np.concatenate(critical).T)
        np.testing.assert_allclose(r, 0.8, atol=0.01)


def test_rotated_grid_in_inference_data_attrs_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from blindlens.posterior_figures import _image_grid

    grid = PixelGrid((N, N - 2), None, (0.1, 0.2), EAST_LEFT)
    coords = {"image_y": (np.arange(N) - (N - 1) / 2) * D, "image_x": (np.arange(N - 2) - (N - 3) / 2) * D}
    pytest.importorskip("arviz")
    from blindlens.arviz_conversion import grid_attrs, grid_coords

    got = grid_coords(grid, "image")
    for key in coords:
        np.testing.assert_allclose(got[key], coords[key], atol=1e-12)
    class FakeIdata(types.SimpleNamespace):  # what _image_grid reads of an InferenceData
        def __contains__(self, group):
            return hasattr(self, group)

    attrs = {"image_pixel_scale": D, **grid_attrs(grid, "image")}
    idata = FakeIdata(posterior=types.SimpleNamespace(attrs=attrs), observed_data=got)
    assert _image_grid(idata) == grid
    fig, ax = plt.subplots()
    grid.show(ax, np.ones(grid.shape), cmap="magma")
    plt.close(fig)
    # the figure helpers draw a rotated observation (pcolormesh) instead of failing on its extent
    from blindlens.simulation import plot_observation
    from blindlens.source_posterior import plot_fixed_lens_summary

    obs = Observation(np.ones(grid.shape), 1.0, gaussian_psf(2 * D, D, 5), None, pix2angle=EAST_LEFT)
    source = np.ones((8, 8))
    assert plot_observation(obs, tmp_path / "obs.png", lens=SIS(theta_E=0.6), source=source,
                            source_pixel_scale=0.1).exists()
    posterior = types.SimpleNamespace(model_images=np.ones((2, *grid.shape)), samples=np.ones((2, 8, 8)))
    assert plot_fixed_lens_summary(obs, posterior, PixelGrid((8, 8), 0.1), tmp_path / "fixed.png").exists()
