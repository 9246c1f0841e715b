"""Observations: an image with its noise map, PSF, pixel scale and optional mask; FITS and npz I/O.

File formats
------------
FITS
    Primary HDU = image (``[row=y, col=x]``, surface brightness per pixel); header ``PIXSCALE`` =
    pixel scale in arcsec/pixel (required). Noise: an image extension ``NOISE`` holding the
    1-sigma map, or a primary-header scalar ``NOISESIG``. Extension ``PSF``: odd-sized kernel at
    the image pixel scale, unit sum. Optional extension ``MASK``: 1 = pixel used, 0 = ignored.
    Optional sky frame: keywords ``P2A1_1, P2A1_2, P2A2_1, P2A2_2`` = the ``pix2angle`` matrix
    (arcsec/pixel); an observation read from a survey file also keeps its celestial WCS, whose
    ``pix2angle`` is :func:`sky_frame_matrix` (shared by the survey reader and the FITS writers).
Survey FITS
    A file with a celestial WCS or a ``SCI`` extension (HST/JWST/Euclid layouts: ``SCI``, ``ERR``,
    ``WHT``, ``DQ``, ``PSF``, a separate PSF file, cut-outs) is read by
    :func:`blindlens.survey_fits.load_survey_observation`; :func:`load_observation` dispatches there.
npz
    Keys ``image``, ``noise`` (map or scalar), ``psf``, ``pixel_scale``, optional ``mask``,
    ``center``, ``pix2angle``, ``wcs_header``, ``noise_source``.

astropy is imported lazily, inside the FITS functions, and nowhere else in blindlens except
:mod:`blindlens.survey_fits` and :mod:`blindlens.io.fits_products`.
"""

from __future__ import annotations

import os
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._types import Array, Float, Image, Kernel
from ..physics.grid import PixelGrid
from ..physics.psf import PSF, validate_psf_kernel

__all__ = ["Observation", "load_observation", "save_observation", "read_fits_array", "read_npz", "sky_frame_matrix"]


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
    pix2angle
        Optional ``2 x 2`` pixel -> sky-frame matrix in arcsec/pixel (the WCS CD matrix times 3600,
        lenstronomy's ``transform_pix2angle``); see :class:`~blindlens.grid.PixelGrid`. With it
        ``pixel_scale`` may be ``None`` (derived as ``sqrt(|det|)``).
    wcs_header
        Optional celestial WCS of the image as FITS header text (kept for FITS products).
    noise_source
        Optional one-line description of where the noise map came from (e.g. ``"ERR extension"``).

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
    pix2angle: tuple[tuple[float, float], tuple[float, float]] | None = eqx.field(static=True, default=None)
    wcs_header: str | None = eqx.field(static=True, default=None)
    noise_source: str | None = eqx.field(static=True, default=None)

    def __init__(self, image, noise, psf, pixel_scale=None, mask=None, center=(0.0, 0.0), pix2angle=None,
                 wcs_header=None, noise_source=None):
        img = np.asarray(image, dtype=np.float64)
        if img.ndim != 2:
            raise ValueError(f"Observation image must be a 2-D array (ny, nx), got shape {img.shape}.")
        if pixel_scale is None:
            if pix2angle is None:
                raise ValueError("Observation needs a pixel_scale (arcsec/pixel) or a pix2angle matrix.")
            pixel_scale = PixelGrid(img.shape, None, pix2angle=pix2angle).pixel_scale
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
        self.pix2angle = PixelGrid(img.shape, pixel_scale, self.center, pix2angle).pix2angle  # validated
        self.wcs_header = None if wcs_header is None else str(wcs_header)
        self.noise_source = None if noise_source is None else str(noise_source)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)

    @property
    def image_grid(self) -> PixelGrid:
        """The :class:`~blindlens.grid.PixelGrid` of the image pixels."""
        return PixelGrid(self.shape, self.pixel_scale, self.center, self.pix2angle)

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
        if obs.pix2angle is not None:
            arrays["pix2angle"] = np.asarray(obs.pix2angle, np.float64)
        for name in ("wcs_header", "noise_source"):
            if getattr(obs, name) is not None:
                arrays[name] = np.asarray(getattr(obs, name))  # a 0-d unicode array (no pickle)
        np.savez(path, **arrays)
        return path
    from astropy.io import fits

    primary = fits.PrimaryHDU(image)
    primary.header["PIXSCALE"] = (obs.pixel_scale, "pixel scale [arcsec/pixel]")
    primary.header["CENTERX"] = (obs.center[0], "x of the image centre [arcsec]")
    primary.header["CENTERY"] = (obs.center[1], "y of the image centre [arcsec]")
    primary.header["BUNIT"] = ("surface brightness", "same units as the source array")
    if obs.wcs_header is not None:  # the celestial WCS first: the blindlens keywords below stay exact
        primary.header.extend(fits.Header.fromstring(obs.wcs_header), update=True)
    if obs.pix2angle is not None:
        for (r, c), value in np.ndenumerate(np.asarray(obs.pix2angle)):
            primary.header[f"P2A{r + 1}_{c + 1}"] = (value, "pixel -> sky frame [arcsec/pixel]")
    if obs.noise_source is not None:
        primary.header["NOISESRC"] = (obs.noise_source, "where the noise map came from")
    hdus = [primary, fits.ImageHDU(noise, name="NOISE"), fits.ImageHDU(psf, name="PSF")]
    if mask is not None:
        hdus.append(fits.ImageHDU(mask, name="MASK"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def load_observation(path: str | os.PathLike, psf=None, mask=None, **survey_options) -> Observation:
    """Read an observation from a FITS or npz file (formats in the module docstring).

    A FITS file with a celestial WCS, a ``SCI`` extension, no ``PIXSCALE`` keyword, or any of
    ``psf``/``mask``/``survey_options`` given is read by
    :func:`blindlens.survey_fits.load_survey_observation` (``psf`` = PSF FITS file or kernel,
    ``mask`` = mask FITS file or array with nonzero = excluded, ``survey_options`` = its other
    keywords: ``cutout``, ``noise``, ``poisson``, ``exposure_time``, ``origin``, extension names).

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
    if kind == "npz" and (psf is not None or mask is not None or survey_options):
        raise ValueError(f"{path}: psf=/mask=/survey options apply to FITS files only; an npz observation holds its own.")
    if kind == "npz":
        f = read_npz(path)
        missing = [k for k in ("image", "noise", "psf", "pixel_scale") if k not in f]
        if missing:
            raise ValueError(
                f"{path}: npz observation is missing key(s) {missing}; it needs image, noise, psf, "
                "pixel_scale (and optionally mask, center)."
            )
        center = tuple(f["center"]) if "center" in f else (0.0, 0.0)
        text = {k: str(f[k]) for k in ("wcs_header", "noise_source") if k in f}
        return Observation(f["image"], f["noise"], f["psf"], f["pixel_scale"], mask=f.get("mask"), center=center,
                           pix2angle=f.get("pix2angle"), **text)
    hdus = _read_fits(path)
    if psf is not None or mask is not None or survey_options or _is_survey_layout(hdus):
        from .survey_fits import load_survey_observation

        return load_survey_observation(path, psf=psf, mask=mask, **survey_options)
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
    return Observation(np.asarray(image, np.float64), noise, psf, header["PIXSCALE"], mask=mask, center=center,
                       pix2angle=read_pix2angle(header), noise_source=header.get("NOISESRC"))


def read_pix2angle(header) -> np.ndarray | None:
    """The ``P2A1_1 .. P2A2_2`` matrix of a FITS header (arcsec/pixel), ``None`` if absent."""
    keys = [f"P2A{r}_{c}" for r in (1, 2) for c in (1, 2)]
    if not any(k in header for k in keys):
        return None
    missing = [k for k in keys if k not in header]
    if missing:
        raise ValueError(f"the FITS header has a partial pix2angle: {missing} missing; give all four P2Ai_j keywords.")
    return np.array([float(header[k]) for k in keys]).reshape(2, 2)


def sky_frame_matrix(wcs) -> Float[Array, "2 2"]:
    """``pix2angle`` (arcsec/pixel) of a celestial astropy WCS: rows (east, north), columns (i, j)."""
    m = np.asarray(wcs.pixel_scale_matrix, np.float64) * 3600.0
    lng, lat = wcs.wcs.lng, wcs.wcs.lat
    return m[[lng, lat], :] if (lng, lat) != (0, 1) else m


def _skycoord(position):
    from astropy.coordinates import SkyCoord

    if isinstance(position, SkyCoord):
        return position
    ra, dec = position
    return SkyCoord(float(ra), float(dec), unit="deg")


def _is_survey_layout(hdus) -> bool:
    """True for files :func:`load_observation` hands to the survey reader (see its docstring)."""
    _, header, image = hdus[0]
    if image is None or "PIXSCALE" not in header or any(name == "SCI" for name, _, _ in hdus[1:]):
        return True
    return any(str(header.get(f"CTYPE{a}", "")).upper().startswith(("RA-", "DEC-", "GLON", "GLAT", "ELON", "ELAT"))
               for a in (1, 2))


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
