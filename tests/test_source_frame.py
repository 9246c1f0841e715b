"""Source draws moved from a sampled grid placement into the source plane's frame (``results/source_frame``)."""

import json

import numpy as np
import pytest
import xarray as xr
from blindlens.lens_models import SIE, ExternalShear, Shift
from blindlens.lensing_operator import LensingOperator

from blindlens.physics.grid import PixelGrid
from blindlens.results.source_frame import placement_offsets, to_source_frame

GRID = PixelGrid((10, 12), 0.05, (0.1, -0.2))


def _source(seed=0):
    s = np.random.default_rng(seed).random((3, *GRID.shape))
    s[:, :2], s[:, -2:], s[:, :, :2], s[:, :, -2:] = 0.0, 0.0, 0.0, 0.0  # a galaxy inside the grid
    return s


def test_whole_pixel_placements_are_exact_moves_and_zero_is_the_identity(x64):
    s = _source()
    p = GRID.pixel_scale
    moved = to_source_frame(s, np.array([[0.0, 0.0], [p, 0.0], [0.0, -p / 2]]), GRID)
    np.testing.assert_allclose(moved[0], s[0], atol=1e-14)
    # alpha_x = +p: the galaxy lies one pixel east of where its grid shows it (column j is column j - 1)
    np.testing.assert_allclose(moved[1][:, 1:], s[1][:, :-1], atol=1e-14)
    # alpha_y = -p/2: half a pixel south, the mean of two rows (rows are y, increasing)
    np.testing.assert_allclose(moved[2][:-1], 0.5 * (s[2][:-1] + s[2][1:]), atol=1e-14)
    assert to_source_frame(s, None, GRID) is not None and np.array_equal(to_source_frame(s, None, GRID), s)
    with pytest.raises(ValueError, match="needs"):
        to_source_frame(s, np.zeros((2, 2)), GRID)


def test_the_registered_source_through_the_mass_alone_makes_the_same_image(x64):
    """What the model says: lens + Shift(alpha) on the grid's source is the mass lens on the source
    moved by alpha (exact for a whole-pixel alpha, where no re-interpolation enters)."""
    s = _source(1)[0]
    image_grid = PixelGrid((24, 24), 0.04)
    mass = SIE(theta_E=0.5, e1=0.1, e2=-0.05, center_x=0.1, center_y=-0.2) + ExternalShear(gamma1=0.02, gamma2=0.01)
    alpha = (-GRID.pixel_scale, 2 * GRID.pixel_scale)
    on_grid = LensingOperator(mass + Shift(alpha_x=alpha[0], alpha_y=alpha[1]), image_grid, GRID, supersampling=2)(s)
    registered = to_source_frame(s[None], np.array([alpha]), GRID)[0]
    in_frame = LensingOperator(mass, image_grid, GRID, supersampling=2)(registered)
    assert float(np.abs(on_grid).max()) > 0.1
    np.testing.assert_allclose(in_frame, on_grid, atol=1e-12)
    # the broken variant: the offsets' sign flipped does not give the image
    wrong = LensingOperator(mass, image_grid, GRID, supersampling=2)(
        to_source_frame(s[None], -np.array([alpha]), GRID)[0])
    assert float(np.abs(wrong - on_grid).max()) > 0.1


def test_placement_offsets_read_the_nuisance_sites_only():
    post = xr.Dataset({"theta_E": (("chain", "draw"), np.ones((2, 3))),
                       "alpha_x": (("chain", "draw"), np.arange(6.0).reshape(2, 3)),
                       "alpha_y": (("chain", "draw"), -np.arange(6.0).reshape(2, 3))})

    class Idata:
        posterior = post

    assert placement_offsets(Idata) is None  # not declared a nuisance: not a sampled placement
    post.attrs["blindlens_nuisance_sites"] = json.dumps(["alpha_x", "alpha_y"])
    np.testing.assert_array_equal(placement_offsets(Idata), np.stack([np.arange(6.0), -np.arange(6.0)], axis=-1))


def test_float64_draws_from_a_netcdf_are_moved_without_a_dtype_warning():
    """A posterior read back from netCDF holds float64 sources; with JAX in float32 (the CLI) they are
    moved in float32, silently, not with JAX's truncation warning on every run."""
    import warnings

    grid = PixelGrid((6, 6), 0.1)
    sources = np.random.default_rng(1).normal(size=(2, 6, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = to_source_frame(sources, np.array([[0.1, 0.0], [0.0, -0.1]]), grid)
    assert moved.shape == sources.shape and np.isfinite(moved).all()
    np.testing.assert_allclose(moved[0, :, 1:], sources[0, :, :-1], atol=1e-5)  # one pixel east, in float32
