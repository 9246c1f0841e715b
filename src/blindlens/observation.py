"""Observations: an image with its noise map, PSF, pixel scale and optional mask; FITS and npz I/O.

File formats
------------
FITS
    Primary HDU = image (``[row=y, col=x]``, surface brightness per pixel); header ``PIXSCALE`` =
    pixel scale in arcsec/pixel (required). Noise: an image extension ``NOISE`` holding the
    1-sigma map, or a primary-header scalar ``NOISESIG``. Extension ``PSF``: odd-sized kernel at
    the image pixel scale, unit sum. Optional extension ``MASK``: 1 = pixel used, 0 = ignored.
npz
    Keys ``image``, ``noise`` (map or scalar), ``psf``, ``pixel_scale``, optional ``mask``.

astropy is imported lazily, inside the FITS functions, and nowhere else in blindlens.
"""

from __future__ import annotations

import os
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._types import Image, Kernel
from .grid import PixelGrid
from .psf import PSF, validate_psf_kernel

__all__ = ["Observation", "load_observation", "save_observation", "read_fits_array", "read_npz"]


class Observation(eqx.Module):
    """One imaging observation of a lens.

    Parameters
    ----------
    image
        ``(ny, nx)`` data, surface brightness per pixel (the source array's units).
    noise
        ``(ny, nx)`` 1-sigma Gaussian noise map (same units), or a positive scalar broadcast to it.
    psf
        Odd-sized kernel at the image pixel scale, unit sum within 1e-3.
    pixel_scale
        Image pixel scale in arcsec/pixel.
    mask
        Optional ``(ny, nx)`` array, 1/True = pixel used. Masked pixels may hold NaN in ``image``
        and ``noise``; they are stored as 0 (image) and 1 (noise) so arithmetic stays finite.
    center
        ``(x, y)`` of the image centre in arcsec (default ``(0, 0)``).

    Raises
    ------
    ValueError
        On NaN/inf in used pixels, shape mismatches, non-positive noise, a PSF that is not
        odd-sized or not normalised, or a non-positive pixel scale.
    """

    image: Image
    noise: Image
    psf: Kernel
    mask: Image | None
    pixel_scale: float = eqx.field(static=True)
    center: tuple[float, float] = eqx.field(static=True, default=(0.0, 0.0))

    def __init__(self, image, noise, psf, pixel_scale, mask=None, center=(0.0, 0.0)):
        img = np.asarray(image, dtype=np.float64)
        if img.ndim != 2:
            raise ValueError(f"Observation image must be a 2-D array (ny, nx), got shape {img.shape}.")
        try:
            pixel_scale = float(pixel_scale)
        except (TypeError, ValueError):
            raise ValueError(f"Observation pixel_scale must be a number (arcsec/pixel), got {pixel_scale!r}.") from None
        if not (np.isfinite(pixel_scale) and pixel_scale > 0):
            raise ValueError(f"Observation pixel_scale must be positive and finite (arcsec/pixel), got {pixel_scale}.")
        if mask is None:
            used = np.ones(img.shape, bool)
            mask_arr = None
        else:
            m = np.asarray(mask)
            if m.shape != img.shape:
                raise ValueError(f"Observation mask has shape {m.shape}, but the image has shape {img.shape}.")
            if not np.all(np.isin(m, (0, 1))):
                raise ValueError("Observation mask must contain only 0/1 (or False/True): 1 = pixel used.")
            used = m.astype(bool)
            if not used.any():
                raise ValueError("Observation mask excludes every pixel; at least one pixel must be 1 (used).")
            mask_arr = used
        if not np.all(np.isfinite(img[used])):
            bad = int((~np.isfinite(img) & used).sum())
            raise ValueError(
                f"Observation image has {bad} NaN/inf pixel(s) that are not masked; mask them "
                "(MASK = 0 there) or replace them."
            )
        nz = np.asarray(noise, dtype=np.float64)
        if nz.ndim == 0:
            nz = np.full(img.shape, float(nz))
        if nz.shape != img.shape:
            raise ValueError(f"Observation noise map has shape {nz.shape}, but the image has shape {img.shape}.")
        if not np.all(np.isfinite(nz[used])):
            raise ValueError("Observation noise map has NaN/inf values in used pixels; mask them or fix the map.")
        if not np.all(nz[used] > 0):
            raise ValueError(
                "Observation noise sigma must be positive in every used pixel (found values <= 0); "
                "mask those pixels or give a valid 1-sigma map."
            )
        kernel = validate_psf_kernel(psf, name="Observation PSF")
        img = np.where(used, img, 0.0)
        nz = np.where(used, nz, 1.0)
        dtype = jnp.asarray(0.0).dtype
        self.image = jnp.asarray(img, dtype)
        self.noise = jnp.asarray(nz, dtype)
        self.psf = jnp.asarray(kernel, dtype)
        self.mask = None if mask_arr is None else jnp.asarray(mask_arr, dtype)
        self.pixel_scale = pixel_scale
        self.center = (float(center[0]), float(center[1]))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)

    @property
    def image_grid(self) -> PixelGrid:
        """The :class:`~blindlens.grid.PixelGrid` of the image pixels."""
        return PixelGrid(self.shape, self.pixel_scale, self.center)

    def psf_operator(self) -> PSF:
        """The PSF bound to this image shape (FFT precomputed)."""
        return PSF(np.asarray(self.psf), self.shape)


# --------------------------------------------------------------------------------- I/O


def save_observation(obs: Observation, path: str | os.PathLike) -> Path:
    """Write an observation to ``.fits`` (or ``.fit``/``.fits.gz``) or ``.npz``; returns the path."""
    path = Path(path)
    kind = _kind(path)
    image = np.asarray(obs.image, np.float64)
    noise = np.asarray(obs.noise, np.float64)
    psf = np.asarray(obs.psf, np.float64)
    mask = None if obs.mask is None else np.asarray(obs.mask).astype(np.uint8)
    if kind == "npz":
        arrays = dict(image=image, noise=noise, psf=psf, pixel_scale=np.float64(obs.pixel_scale),
                      center=np.asarray(obs.center, np.float64))
        if mask is not None:
            arrays["mask"] = mask
        np.savez(path, **arrays)
        return path
    from astropy.io import fits

    primary = fits.PrimaryHDU(image)
    primary.header["PIXSCALE"] = (obs.pixel_scale, "pixel scale [arcsec/pixel]")
    primary.header["CENTERX"] = (obs.center[0], "x of the image centre [arcsec]")
    primary.header["CENTERY"] = (obs.center[1], "y of the image centre [arcsec]")
    primary.header["BUNIT"] = ("surface brightness", "same units as the source array")
    hdus = [primary, fits.ImageHDU(noise, name="NOISE"), fits.ImageHDU(psf, name="PSF")]
    if mask is not None:
        hdus.append(fits.ImageHDU(mask, name="MASK"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def load_observation(path: str | os.PathLike) -> Observation:
    """Read an observation from a FITS or npz file (formats in the module docstring).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a required item (PIXSCALE, PSF, noise) is missing or any content is invalid.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"observation file {path} does not exist.")
    kind = _kind(path)
    if kind == "npz":
        f = read_npz(path)
        missing = [k for k in ("image", "noise", "psf", "pixel_scale") if k not in f]
        if missing:
            raise ValueError(
                f"{path}: npz observation is missing key(s) {missing}; it needs image, noise, psf, "
                "pixel_scale (and optionally mask, center)."
            )
        center = tuple(f["center"]) if "center" in f else (0.0, 0.0)
        return Observation(f["image"], f["noise"], f["psf"], f["pixel_scale"], mask=f.get("mask"), center=center)
    hdus = _read_fits(path)
    _, header, image = hdus[0]
    if image is None:
        raise ValueError(f"{path}: the primary HDU holds no image; put the image in the primary HDU.")
    if "PIXSCALE" not in header:
        raise ValueError(
            f"{path}: primary header has no PIXSCALE keyword; add PIXSCALE = pixel scale in arcsec/pixel."
        )
    names = {name: data for name, _, data in hdus[1:]}
    for name in ("NOISE", "MASK"):
        if name in names and names[name] is None:
            raise ValueError(f"{path}: the {name} extension holds no data.")
    if "NOISE" in names:
        noise = np.asarray(names["NOISE"], np.float64)
    elif "NOISESIG" in header:
        noise = float(header["NOISESIG"])
    else:
        raise ValueError(
            f"{path}: no noise given; add an image extension NOISE (1-sigma map) or a primary-header "
            "scalar NOISESIG."
        )
    if names.get("PSF") is None:
        raise ValueError(f"{path}: no PSF extension; add an image extension named PSF (odd-sized, unit sum).")
    psf = np.asarray(names["PSF"], np.float64)
    mask = names.get("MASK")
    center = (float(header.get("CENTERX", 0.0)), float(header.get("CENTERY", 0.0)))
    return Observation(np.asarray(image, np.float64), noise, psf, header["PIXSCALE"], mask=mask, center=center)


def read_fits_array(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """The data of the first HDU of ``path`` with ``ndim`` dimensions (primary HDU first).

    The one place besides the observation reader/writer where blindlens touches astropy, so that
    FITS support stays behind this module. Raises ``ValueError`` if no such HDU exists or the file
    cannot be read as FITS (empty, truncated, not FITS).
    """
    for _, _, data in _read_fits(path):
        if data is not None and data.ndim == ndim:
            return data
    raise ValueError(f"{path}: no {ndim}-d image HDU found (the primary HDU should hold the data).")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive at ``path``, by name (read with ``allow_pickle=False``).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        With a one-line message naming the file if it is empty, truncated, damaged, not an
        ``.npz`` archive, or holds pickled (object) data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with loaded as f:
            return {name: f[name] for name in f.files}  # reading every member surfaces CRC errors here
    except Exception as err:  # untrusted bytes: any failure to parse them is a bad file
        raise ValueError(f"{path}: not a readable .npz file ({_describe(err, path)}); it may be truncated or damaged.") from None


def _read_fits(path: str | os.PathLike) -> list:
    """``(name, header, data)`` of every HDU, data read eagerly; a bad file is one ``ValueError``."""
    import warnings

    from astropy.io import fits

    def damaged(reason: str) -> ValueError:
        return ValueError(f"{path}: not a readable FITS file ({reason}); it may be empty, truncated or not FITS.")

    with warnings.catch_warnings(record=True) as caught:  # astropy warns (to stderr) about truncation
        warnings.simplefilter("always")
        try:
            with fits.open(path) as hdul:
                hdus = [(h.name.upper(), h.header.copy(), None if h.data is None else np.array(h.data)) for h in hdul]
        except FileNotFoundError:
            raise
        except Exception as err:  # untrusted bytes: any failure to parse them is a bad file
            hdus, reason = None, _describe(err, path)
    # astropy drops an HDU whose header is cut off with only a warning: that is a damaged file too
    notes = [str(w.message) for w in caught if "truncated" in str(w.message) or "Error validating header" in str(w.message)]
    if notes:
        raise damaged(_describe(notes[0], path))
    if hdus is None:
        raise damaged(reason)
    for w in caught:  # a readable file: pass astropy's warnings on as usual
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return hdus


def _describe(err, path) -> str:
    """One short line describing a low-level read error or warning (without repeating the path)."""
    lines = str(err).replace(str(path), "the file").strip().splitlines()
    text = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if len(text) > 120:
        text = text[:117] + "..."
    return text or type(err).__name__


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".fits", ".fit", ".fts", ".fits.gz")):
        return "fits"
    raise ValueError(f"unknown observation file type for {path}: use .fits or .npz.")
