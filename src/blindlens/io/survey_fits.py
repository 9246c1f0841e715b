"""Survey FITS input: read HST/JWST/Euclid-style frames into an :class:`~blindlens.observation.Observation`.

The writers (that layout, PSF files, the posterior's FITS products with world coordinates) are in
:mod:`blindlens.io.fits_products`; ``save_survey_fits``, ``save_psf_fits`` and
``write_fits_products`` are re-exported here.

Sky frame
---------
With a celestial WCS, blindlens's ``x`` is the offset in ``RA cos(Dec)``, positive to the **east**,
and ``y`` the offset in Dec, positive north, in arcsec, from the centre of the (cut-out) image or
from a given sky position (``origin``). The pixel -> sky-frame map is the local linear WCS,
``pix2angle = CD * 3600`` (rows RA, Dec; columns pixel ``i``, ``j``; computed by
:func:`~blindlens.observation.sky_frame_matrix`, re-exported here): lenstronomy's
``PixelGrid(transform_pix2angle=CD * 3600)`` convention. A standard east-left image has
``CD1_1 < 0``. Distortion terms (SIP, lookup tables) are ignored: use drizzled / resampled frames.

Input layout (:func:`load_survey_observation`)
----------------------------------------------
* Image: extension ``SCI`` (first version), else the primary HDU.
* Noise, in this order: ``noise=`` (explicit), extension ``ERR`` (1-sigma), ``NOISE`` (1-sigma,
  blindlens's simple format), ``WHT`` (inverse variance, ``1 / sqrt``), header ``NOISESIG`` or
  ``NOISE`` (background sigma); optionally plus a Poisson term (``poisson=True``). The choice is
  recorded in ``Observation.noise_source``.
* Mask (pixels excluded from the likelihood): ``DQ`` nonzero, ``MASK`` extension 0 (blindlens's
  simple format, 1 = used), a mask file or array nonzero, non-finite image or noise, ``ERR <= 0``
  and ``WHT <= 0``.
* PSF: ``psf=`` (a FITS file or a kernel array), else the ``PSF`` extension; normalised to unit sum.
  A PSF file whose header gives a pixel scale (``PIXSCALE``, ``PIXELSCL`` or a celestial WCS) that
  differs from the image's by more than 1% is **refused**, not resampled.

astropy is imported here, in :mod:`blindlens.io.fits_products` and in :mod:`blindlens.observation` only.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..physics.grid import PixelGrid
from .fits_products import save_psf_fits, save_survey_fits, write_fits_products
from .observation import (
    Observation,
    _read_fits,
    _skycoord,
    read_pix2angle,
    sky_frame_matrix,
)

__all__ = [
    "Cutout",
    "load_survey_observation",
    "save_survey_fits",
    "save_psf_fits",
    "sky_frame_matrix",
    "write_fits_products",
]

PSF_SCALE_RTOL = 1e-2
"""Largest relative difference between the PSF file's and the image's pixel scale."""

_WCS_KEYS = ("CTYPE1", "CTYPE2", "CD1_1", "CDELT1", "PC1_1", "CRPIX1")


@dataclass(frozen=True)
class Cutout:
    """A square or rectangular cut-out of a larger frame (astropy ``Cutout2D``, WCS carried along).

    Parameters
    ----------
    size
        Side in pixels, or ``(ny, nx)``.
    pixel, sky
        The centre, one of: ``(x, y)`` 0-based pixel (column, row) of the full frame; an astropy
        ``SkyCoord`` or ``(ra, dec)`` in degrees (needs a celestial WCS).
    """

    size: int | tuple[int, int]
    pixel: tuple[float, float] | None = None
    sky: object = None

    def __post_init__(self):
        if (self.pixel is None) == (self.sky is None):
            raise ValueError("Cutout needs exactly one centre: pixel=(x, y) or sky=SkyCoord / (ra_deg, dec_deg).")


def load_survey_observation(
    path: str | os.PathLike,
    *,
    psf=None,
    mask=None,
    sci: str = "SCI",
    err: str = "ERR",
    wht: str = "WHT",
    dq: str = "DQ",
    cutout: Cutout | None = None,
    origin=None,
    noise=None,
    poisson: bool = False,
    exposure_time: float | None = None,
) -> Observation:
    """Read a survey FITS frame (layout in the module docstring) into an Observation.

    Parameters
    ----------
    path
        The FITS file.
    psf
        PSF FITS file (first 2-D HDU) or ``(ky, kx)`` kernel array at the image pixel scale;
        default: the file's ``PSF`` extension. A file at another pixel scale is refused.
    mask
        Optional mask FITS file or ``(ny, nx)`` array (of the full frame): **nonzero = excluded**.
    sci, err, wht, dq
        Extension names of the image, 1-sigma map, inverse-variance map and data-quality flags.
    cutout
        Optional :class:`Cutout` of the frame.
    origin
        Sky position (``SkyCoord`` or ``(ra, dec)`` degrees) of ``(x, y) = (0, 0)``; default: the
        image centre (or ``CENTERX``/``CENTERY`` keywords, arcsec).
    noise
        Background 1-sigma (scalar or map, image units); overrides the file's noise.
    poisson
        Add the Poisson variance ``max(image, 0) / exposure_time`` (image in counts per second).
    exposure_time
        Seconds; default the ``EXPTIME`` keyword (needed only with ``poisson=True``).

    Returns
    -------
    Observation
        With ``pix2angle``, ``pixel_scale`` and ``wcs_header`` from the celestial WCS (else
        ``PIXSCALE``) and ``noise_source`` saying which noise was used.

    Raises
    ------
    ValueError
        One line naming the problem and the fix: no image, a WCS without celestial axes, no pixel
        scale, an extension of the wrong shape, ``WHT <= 0`` everywhere, no noise, no PSF, a PSF
        file at another pixel scale, a sky cut-out without a WCS.
    """
    path = Path(path)
    hdus = _read_fits(path)
    found = {}
    for name, header, data in hdus[1:]:
        found.setdefault(name, (header, data))
    primary_header, primary_data = hdus[0][1], hdus[0][2]
    if found.get(sci.upper(), (None, None))[1] is not None:
        where, (header, image) = f"the {sci.upper()} extension", found[sci.upper()]
    elif primary_data is not None and np.squeeze(primary_data).ndim == 2:
        where, header, image = "the primary HDU", primary_header, primary_data
    else:
        raise ValueError(f"{path}: no image found (no {sci.upper()} extension with data and no 2-D primary image); "
                         "pass sci='EXTNAME' or put the image in the primary HDU.")
    image = np.asarray(np.squeeze(image), np.float64)
    if image.ndim != 2:
        raise ValueError(f"{path}: the image in {where} has shape {image.shape}; it must be 2-D (ny, nx).")

    def keyword(name, default=None):
        return header[name] if name in header else primary_header.get(name, default)

    wcs = _celestial_wcs(header, path, where)
    pix2angle, pixel_scale = _pixel_frame(header, primary_header, wcs, path)  # a cut-out keeps both
    # per-pixel extensions of the frame (checked against the full image shape, then cut out)
    layers = {}
    for key, name in (("err", err), ("wht", wht), ("dq", dq), ("noise", "NOISE"), ("mask", "MASK")):
        ext = None if name is None else found.get(name.upper())
        if ext is None:
            continue
        data = None if ext[1] is None else np.squeeze(ext[1])
        if data is None or data.shape != image.shape:
            got = "no data" if data is None else f"shape {data.shape}"
            raise ValueError(f"{path}: the {name.upper()} extension has {got}, but the image has shape {image.shape}; "
                             f"give a matching {name.upper()} map or remove it.")
        layers[key] = np.asarray(data, np.float64)
    if mask is not None:
        bad = _first_image(mask, "mask")[1] if isinstance(mask, (str, os.PathLike)) else np.asarray(mask)
        if bad.shape != image.shape:
            raise ValueError(f"the mask has shape {bad.shape}, but the image has shape {image.shape}; give a mask of the "
                             "full frame (nonzero = excluded).")
        layers["user_mask"] = np.asarray(bad != 0, np.float64)
    if noise is not None and np.ndim(noise) == 2:
        layers["user_noise"] = np.asarray(noise, np.float64)
        if layers["user_noise"].shape != image.shape:
            raise ValueError(f"noise= has shape {layers['user_noise'].shape}, but the image has shape {image.shape}.")

    if cutout is not None:
        image, layers, wcs = _cut(image, layers, wcs, cutout, path)

    used = np.isfinite(image)
    for key, flag in (("dq", lambda a: a == 0), ("mask", lambda a: a != 0), ("user_mask", lambda a: a == 0)):
        if key in layers:
            used &= flag(np.nan_to_num(layers[key], nan=1.0 if key != "mask" else 0.0))
    sigma, noise_source = _noise(layers, noise, keyword, path)
    if poisson:
        t = exposure_time if exposure_time is not None else keyword("EXPTIME")
        if t is None or not float(t) > 0:
            raise ValueError(f"{path}: poisson=True needs a positive exposure time; pass exposure_time= or add EXPTIME.")
        sigma = np.sqrt(sigma**2 + np.maximum(np.where(used, image, 0.0), 0.0) / float(t))
        noise_source += f" + Poisson term (exposure time {float(t):g} s)"
    sigma = np.broadcast_to(sigma, image.shape)
    used &= np.isfinite(sigma) & (sigma > 0)

    center = _frame_center(image.shape, wcs, pix2angle, origin, keyword, path)
    kernel = _psf_kernel(psf, found, pixel_scale, path)
    stored = keyword("NOISESRC")
    if stored is not None and noise_source == "NOISE extension":
        noise_source = str(stored)  # a file written by save_observation keeps its provenance
    return Observation(
        np.where(used, image, 0.0), np.where(used, sigma, 1.0), kernel, pixel_scale,
        mask=None if used.all() else used.astype(np.uint8), center=center, pix2angle=pix2angle,
        wcs_header=None if wcs is None else wcs.to_header().tostring(), noise_source=noise_source,
    )


def _celestial_wcs(header, path, where):
    """The celestial WCS of ``header`` (``None`` without WCS keywords); an error without celestial axes."""
    if not any(k in header for k in _WCS_KEYS):
        return None
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception as error:  # a malformed WCS is a bad file
            reason = str(error).splitlines()[0]
            raise ValueError(f"{path}: the WCS in {where} cannot be read ({reason}); fix its keywords.") from None
    if wcs.has_celestial:
        return wcs.celestial
    if "PIXSCALE" in header:
        return None  # a linear (pixel) WCS beside PIXSCALE: the axis-aligned frame
    ctypes = [str(header.get(f"CTYPE{a}", "")) for a in (1, 2)]
    raise ValueError(f"{path}: the WCS in {where} has no celestial axes (CTYPE {ctypes}); give RA---TAN/DEC--TAN axes "
                     "with a CD matrix, or remove the WCS and set PIXSCALE (arcsec/pixel).")


def _pixel_frame(header, primary_header, wcs, path) -> tuple:
    """``(pix2angle or None, pixel_scale)`` from the WCS, the ``P2A`` keywords or ``PIXSCALE``."""
    stored = read_pix2angle(header)
    if wcs is None:
        if stored is not None:
            return stored, PixelGrid((1, 1), None, pix2angle=stored).pixel_scale
        scale = header.get("PIXSCALE", primary_header.get("PIXSCALE"))
        if scale is None:
            raise ValueError(f"{path}: no pixel scale: the image header has neither a celestial WCS (CD matrix, "
                             "CTYPE RA---TAN/DEC--TAN) nor a PIXSCALE keyword; add one (PIXSCALE in arcsec/pixel).")
        return None, scale
    m = sky_frame_matrix(wcs)
    if stored is not None:  # blindlens's own exact record of the same matrix
        if not np.allclose(stored, m, rtol=1e-6, atol=1e-9 * np.abs(m).max()):
            raise ValueError(f"{path}: the P2A keywords disagree with the celestial WCS; remove one of them.")
        m = stored
    scale = PixelGrid((1, 1), None, pix2angle=m).pixel_scale
    if "PIXSCALE" in header and abs(float(header["PIXSCALE"]) - scale) > 1e-3 * scale:
        raise ValueError(f"{path}: PIXSCALE = {header['PIXSCALE']} disagrees with the WCS pixel scale {scale:.6g}\"; "
                         "remove PIXSCALE or fix the WCS.")
    return m, scale


def _frame_center(shape, wcs, pix2angle, origin, keyword, path):
    """``(x, y)`` in arcsec of the image centre in the frame whose origin is ``origin``."""
    if origin is None:
        return (float(keyword("CENTERX", 0.0)), float(keyword("CENTERY", 0.0)))
    if wcs is None:
        raise ValueError(f"{path}: origin= (a sky position) needs a celestial WCS in the image header.")
    px, py = wcs.world_to_pixel(_skycoord(origin))
    offset = np.array([(shape[1] - 1) / 2 - float(px), (shape[0] - 1) / 2 - float(py)])
    x, y = np.asarray(pix2angle) @ offset
    return (float(x), float(y))


def _noise(layers, noise, keyword, path):
    """``(sigma, description)``: the 1-sigma map (or scalar) and where it came from."""
    if noise is not None:
        sigma = layers.get("user_noise", np.asarray(noise, np.float64))
        if np.ndim(sigma) == 0 and not float(sigma) > 0:
            raise ValueError(f"noise= must be a positive 1-sigma (image units), got {float(sigma)}.")
        return sigma, "noise= argument" + (" (map)" if np.ndim(sigma) == 2 else f" (background sigma {float(sigma):g})")
    if "err" in layers:
        err = layers["err"]
        if not np.any(err > 0):
            raise ValueError(f"{path}: the ERR extension is <= 0 everywhere; it must be the 1-sigma map, or give noise=.")
        return np.where(err > 0, err, np.nan), "ERR extension"
    if "noise" in layers:
        return layers["noise"], "NOISE extension"
    if "wht" in layers:
        wht = layers["wht"]
        if not np.any(wht > 0):
            raise ValueError(f"{path}: the WHT extension is <= 0 everywhere; it must be an inverse-variance map "
                             "(> 0 where there is data), or give an ERR extension or noise=.")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(wht > 0, 1.0 / np.sqrt(wht), np.nan), "WHT extension (1/sqrt of the inverse variance)"
    for name in ("NOISESIG", "NOISE"):
        value = keyword(name)
        if value is not None:
            if not float(value) > 0:
                raise ValueError(f"{path}: the {name} keyword must be a positive 1-sigma, got {value}.")
            return np.float64(value), f"{name} keyword (background sigma {float(value):g})"
    raise ValueError(f"{path}: no noise found; add an ERR (1-sigma) or WHT (inverse variance) extension, a NOISESIG "
                     "keyword, or pass noise=sigma.")


def _psf_kernel(psf, found, image_scale, path) -> np.ndarray:
    if psf is None:
        ext = found.get("PSF")
        if ext is None or ext[1] is None:
            raise ValueError(f"{path}: no PSF; pass psf='psf.fits' (--psf) or add an image extension named PSF.")
        kernel = np.asarray(np.squeeze(ext[1]), np.float64)
    elif isinstance(psf, (str, os.PathLike)):
        header, kernel = _first_image(psf, "PSF")
        _check_psf_scale(header, psf, image_scale)
    else:
        kernel = np.asarray(psf, np.float64)
    total = kernel.sum() if kernel.ndim == 2 else 0.0
    return kernel / total if np.isfinite(total) and total > 0 else kernel  # unit sum (else validated as is)


def _header_pixel_scale(header) -> float | None:
    """Pixel scale in arcsec of a header: ``PIXSCALE``, ``PIXELSCL``, or a CD/CDELT WCS in deg or arcsec."""
    for key in ("PIXSCALE", "PIXELSCL"):
        if key in header:
            return float(header[key])
    if not any(k in header for k in ("CD1_1", "CDELT1")):
        return None
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # an unreadable WCS gives no scale; the kernel is then taken as is
            return None
    if wcs.has_celestial:
        return float(np.sqrt(abs(np.linalg.det(sky_frame_matrix(wcs.celestial)))))
    units = {str(u) for u in wcs.wcs.cunit}
    if units <= {"deg", "arcsec"} and len(units) == 1:
        factor = 3600.0 if units == {"deg"} else 1.0
        return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * factor
    return None


def _check_psf_scale(header, psf_path, image_scale):
    """Refuse a PSF file whose header gives a pixel scale different from the image's."""
    scale = _header_pixel_scale(header)
    if scale is None:
        return
    image_scale = float(image_scale)
    if abs(scale - image_scale) > PSF_SCALE_RTOL * image_scale:
        raise ValueError(f"{psf_path}: the PSF is sampled at {scale:.6g}\"/pixel but the image at "
                         f"{image_scale:.6g}\"/pixel; "
                         "blindlens refuses (does not resample) it: resample the PSF to the image pixel scale.")


def _first_image(path, what) -> tuple:
    """``(header, data)`` of the first 2-D image HDU of a PSF or mask file."""
    for _, header, data in _read_fits(path):
        if data is not None and np.squeeze(data).ndim == 2:
            return header, np.asarray(np.squeeze(data), np.float64)
    raise ValueError(f"{path}: no 2-D image in the {what} file; put it in the primary HDU.")


def _cut(image, layers, wcs, cutout: Cutout, path):
    """Cut the image and every layer out of the frame (``Cutout2D``, partial overlap filled with NaN)."""
    from astropy.nddata import Cutout2D, NoOverlapError

    if cutout.sky is not None:
        if wcs is None:
            raise ValueError(f"{path}: a sky-position cutout needs a celestial WCS; give Cutout(pixel=(x, y)) instead.")
        position = _skycoord(cutout.sky)
    else:
        position = tuple(float(v) for v in cutout.pixel)
    size = cutout.size if np.ndim(cutout.size) == 0 else tuple(int(n) for n in cutout.size)
    try:
        cut = Cutout2D(image, position, size, wcs=wcs, mode="partial", fill_value=np.nan)
    except NoOverlapError:
        raise ValueError(f"{path}: the cutout at {cutout.pixel or cutout.sky} does not overlap the image.") from None
    out = {key: _cut_like(arr, cut) for key, arr in layers.items()}
    return np.asarray(cut.data, np.float64), out, cut.wcs


def _cut_like(array, cut) -> np.ndarray:
    out = np.full(cut.shape, np.nan)
    out[cut.slices_cutout] = array[cut.slices_original]
    return out
