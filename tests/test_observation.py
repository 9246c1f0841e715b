"""Observation validation and FITS/npz round trips."""

import sys

import numpy as np
import pytest

from blindlens.grid import PixelGrid
from blindlens.observation import Observation, load_observation, save_observation
from blindlens.psf import gaussian_psf


def _obs(mask=True, noise_map=True):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(10, 12))
    noise = rng.uniform(0.5, 1.5, size=image.shape) if noise_map else 0.7
    m = (rng.random(image.shape) > 0.2).astype(int) if mask else None
    return Observation(image, noise, gaussian_psf(0.2, 0.1, 5), 0.1, mask=m)


@pytest.mark.parametrize("suffix", [".fits", ".npz"])
@pytest.mark.parametrize("mask", [True, False])
def test_round_trip(tmp_path, suffix, mask):
    obs = _obs(mask=mask)
    path = save_observation(obs, tmp_path / f"obs{suffix}")
    back = load_observation(path)
    for name in ("image", "noise", "psf"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(obs, name)))
    assert back.pixel_scale == obs.pixel_scale
    if mask:
        np.testing.assert_array_equal(np.asarray(back.mask), np.asarray(obs.mask))
    else:
        assert back.mask is None
    assert back.image_grid == PixelGrid((10, 12), 0.1)


def _write_fits(path, image, psf=None, noise=None, header=None, noisesig=None, mask=None):
    from astropy.io import fits

    primary = fits.PrimaryHDU(image)
    for k, v in (header or {}).items():
        primary.header[k] = v
    if noisesig is not None:
        primary.header["NOISESIG"] = noisesig
    hdus = [primary]
    if noise is not None:
        hdus.append(fits.ImageHDU(noise, name="NOISE"))
    if psf is not None:
        hdus.append(fits.ImageHDU(psf, name="PSF"))
    if mask is not None:
        hdus.append(fits.ImageHDU(mask, name="MASK"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_fits_scalar_noisesig(tmp_path):
    img = np.ones((6, 6))
    path = _write_fits(tmp_path / "a.fits", img, psf=gaussian_psf(0.2, 0.1, 3), header={"PIXSCALE": 0.1}, noisesig=0.3)
    obs = load_observation(path)
    np.testing.assert_allclose(np.asarray(obs.noise), 0.3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(header={}, noisesig=0.3, psf=gaussian_psf(0.2, 0.1, 3)), "PIXSCALE"),
        (dict(header={"PIXSCALE": 0.1}, psf=gaussian_psf(0.2, 0.1, 3)), "NOISE"),
        (dict(header={"PIXSCALE": 0.1}, noisesig=0.3), "PSF"),
        (dict(header={"PIXSCALE": 0.1}, noisesig=0.3, psf=np.ones((4, 4)) / 16), "even size"),
        (dict(header={"PIXSCALE": 0.1}, noisesig=0.3, psf=np.ones((3, 3))), "sums to"),
        (dict(header={"PIXSCALE": 0.1}, noisesig=-1.0, psf=gaussian_psf(0.2, 0.1, 3)), "positive"),
        (dict(header={"PIXSCALE": 0.1}, noise=np.ones((5, 6)), psf=gaussian_psf(0.2, 0.1, 3)), "noise map has shape"),
        (dict(header={"PIXSCALE": 0.1}, noisesig=0.3, psf=gaussian_psf(0.2, 0.1, 3), mask=np.ones((5, 5))), "mask has shape"),
        (dict(header={"PIXSCALE": -0.1}, noisesig=0.3, psf=gaussian_psf(0.2, 0.1, 3)), "pixel_scale"),
    ],
)
def test_fits_bad_inputs(tmp_path, kwargs, match):
    path = _write_fits(tmp_path / "bad.fits", np.ones((6, 6)), **kwargs)
    with pytest.raises(ValueError, match=match):
        load_observation(path)


def test_nan_pixels_need_a_mask():
    img = np.ones((6, 6))
    img[2, 3] = np.nan
    psf = gaussian_psf(0.2, 0.1, 3)
    with pytest.raises(ValueError, match="NaN"):
        Observation(img, 0.1, psf, 0.1)
    mask = np.ones((6, 6), int)
    mask[2, 3] = 0
    obs = Observation(img, 0.1, psf, 0.1, mask=mask)  # masked NaN is fine and stored as 0
    assert np.all(np.isfinite(np.asarray(obs.image))) and float(obs.image[2, 3]) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        Observation(np.ones((6, 6)), np.where(mask, 0.1, np.nan).T, psf, 0.1, mask=mask)


def test_other_bad_inputs(tmp_path):
    psf = gaussian_psf(0.2, 0.1, 3)
    with pytest.raises(ValueError, match="2-D"):
        Observation(np.ones(5), 0.1, psf, 0.1)
    with pytest.raises(ValueError, match="0/1"):
        Observation(np.ones((4, 4)), 0.1, psf, 0.1, mask=np.full((4, 4), 2))
    with pytest.raises(ValueError, match="every pixel"):
        Observation(np.ones((4, 4)), 0.1, psf, 0.1, mask=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="positive"):
        Observation(np.ones((4, 4)), np.zeros((4, 4)), psf, 0.1)
    np.savez(tmp_path / "x.npz", image=np.ones((4, 4)), psf=psf, pixel_scale=0.1)
    with pytest.raises(ValueError, match="missing key"):
        load_observation(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        load_observation(tmp_path / "nope.fits")
    with pytest.raises(ValueError, match="file type"):
        save_observation(_obs(), tmp_path / "obs.txt")


def test_astropy_not_imported_by_package():
    import subprocess

    code = "import blindlens, blindlens.observation, sys; print('astropy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _damaged(path, damage):
    """Write a damaged copy of the file at ``path`` (truncated, empty or random bytes); returns its path."""
    data = path.read_bytes()
    out = path.with_name(f"{damage}_{path.name}")
    out.write_bytes({"truncated": data[: len(data) // 2 + 100], "empty": b"",
                     "random": np.random.default_rng(1).bytes(len(data))}[damage])
    return out


@pytest.mark.parametrize("suffix", [".fits", ".npz"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_damaged_observation_files_are_one_line_errors(tmp_path, capsys, suffix, damage):
    """A truncated, empty or random-bytes FITS/npz gives a ValueError naming the file (exit 2 in the CLI)."""
    from blindlens.cli import main

    bad = _damaged(save_observation(_obs(), tmp_path / f"obs{suffix}"), damage)
    kind = "FITS" if suffix == ".fits" else ".npz"
    with pytest.raises(ValueError, match=f"{bad.name}: not a readable {kind} file"):
        load_observation(bad)
    assert main(["plot-observation", str(bad), "--out", str(tmp_path / "fig.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "not a readable" in err, err
    assert not (tmp_path / "fig.png").exists()


def test_read_fits_array_and_read_npz_name_a_damaged_file(tmp_path):
    from blindlens.observation import read_fits_array, read_npz

    path = save_observation(_obs(), tmp_path / "obs.fits")
    assert read_fits_array(path, 2).shape == (10, 12)
    with pytest.raises(ValueError, match="truncated_obs.fits: not a readable FITS file"):
        read_fits_array(_damaged(path, "truncated"), 2)
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(ValueError, match="a.npy: not a readable .npz file.*single .npy array"):
        read_npz(tmp_path / "a.npy")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="objects.npz: not a readable .npz file"):
        read_npz(tmp_path / "objects.npz")
