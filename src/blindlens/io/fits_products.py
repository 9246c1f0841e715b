"""FITS writers with world coordinates: the survey layout, PSF files and the posterior's FITS products.

The writing half of blindlens's survey FITS I/O; :mod:`blindlens.survey_fits` reads what is written
here (and re-exports these functions, so ``blindlens.survey_fits.save_survey_fits`` keeps working).

Sky frame
---------
The frame of :mod:`blindlens.survey_fits` (its "Sky frame" section): ``x`` east, ``y`` north, in
arcsec. A celestial WCS is written as a TAN projection with ``CD = pix2angle / 3600`` (deg/pixel),
the inverse of :func:`~blindlens.observation.sky_frame_matrix`.

Output layout
-------------
:func:`save_survey_fits`
    Header-only PRIMARY (``ORIGIN``, optional ``EXPTIME``), then ``SCI``, ``ERR``, ``WHT``, ``DQ``
    (each with the celestial WCS) and ``PSF``: the layout that
    :func:`~blindlens.survey_fits.load_survey_observation` reads.
:func:`save_psf_fits`
    A PSF kernel in the primary HDU with ``PIXSCALE`` (arcsec/pixel).
:func:`write_fits_products`
    One file per map: image-plane maps with the input image's WCS, source-plane maps with a TAN
    WCS at the sky position of the frame origin ``(x, y) = (0, 0)``.

astropy is imported lazily, inside the functions, here, in :mod:`blindlens.survey_fits` and in
:mod:`blindlens.observation` only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._types import Array, Float, Image, Kernel
from ..physics.grid import PixelGrid
from .observation import _skycoord, sky_frame_matrix

__all__ = ["save_psf_fits", "save_survey_fits", "write_fits_products"]


def _tan_header(pix2angle, crval, crpix):
    """A celestial TAN WCS: ``CD = pix2angle / 3600`` (deg/pixel), ``CRVAL = (ra, dec)`` deg, 1-based ``CRPIX``."""
    from astropy.io import fits

    header = fits.Header()
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = float(crval[0]), float(crval[1])
    header["CRPIX1"], header["CRPIX2"] = float(crpix[0]), float(crpix[1])
    for (r, c), value in np.ndenumerate(np.asarray(pix2angle, np.float64) / 3600.0):
        header[f"CD{r + 1}_{c + 1}"] = float(value)
    header["RADESYS"] = "ICRS"
    return header


def _as_header(wcs_header):
    from astropy.io import fits

    return wcs_header.copy() if isinstance(wcs_header, fits.Header) else fits.Header.fromstring(str(wcs_header))


def save_survey_fits(
    path: str | os.PathLike,
    image: Image,
    *,
    pix2angle=None,
    sky_center=None,
    wcs_header=None,
    err: Image | None = None,
    wht: Image | None = None,
    dq=None,
    psf: Kernel | None = None,
    exptime: float | None = None,
    header: dict | None = None,
) -> Path:
    """Write a survey-style FITS file: header-only PRIMARY, then ``SCI``, ``ERR``, ``WHT``, ``DQ``, ``PSF``.

    Parameters
    ----------
    path
        Output file (overwritten).
    image
        ``(ny, nx)`` science image (surface brightness per pixel).
    pix2angle, sky_center
        The celestial WCS as ``pix2angle`` (arcsec/pixel, see :class:`~blindlens.grid.PixelGrid`;
        ``CD = pix2angle / 3600``) and the sky position of the image centre (``SkyCoord`` or
        ``(ra, dec)`` degrees): a TAN projection with ``CRPIX`` at the image centre. Or:
    wcs_header
        A celestial WCS header (astropy ``Header`` or its text), e.g. ``Observation.wcs_header``.
    err, wht, dq
        Optional 1-sigma map, inverse-variance map, integer flags (nonzero = bad), each ``(ny, nx)``.
    psf
        Optional PSF kernel at the image pixel scale, written as the ``PSF`` extension.
    exptime
        Optional exposure time in seconds (``EXPTIME`` in the primary header).
    header
        Extra primary-header keywords.

    Returns
    -------
    Path
        ``path``.
    """
    from astropy.io import fits

    image = np.asarray(image, np.float64)
    if image.ndim != 2:
        raise ValueError(f"save_survey_fits: image must be 2-D (ny, nx), got shape {image.shape}.")
    ny, nx = image.shape
    if wcs_header is not None:
        wcs = _as_header(wcs_header)
    elif pix2angle is not None and sky_center is not None:
        sky = _skycoord(sky_center)
        PixelGrid(image.shape, None, pix2angle=pix2angle)  # validates the matrix
        wcs = _tan_header(pix2angle, (sky.icrs.ra.deg, sky.icrs.dec.deg), ((nx + 1) / 2, (ny + 1) / 2))
    else:
        raise ValueError("save_survey_fits needs wcs_header=, or pix2angle= and sky_center= (the image centre on the sky).")
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = "blindlens"
    if exptime is not None:
        primary.header["EXPTIME"] = (float(exptime), "exposure time [s]")
    for key, value in (header or {}).items():
        primary.header[key] = value
    hdus = [primary, fits.ImageHDU(image, header=wcs.copy(), name="SCI")]
    for name, data, dtype in (("ERR", err, np.float64), ("WHT", wht, np.float64), ("DQ", dq, np.int32)):
        if data is None:
            continue
        data = np.asarray(data)
        if data.shape != image.shape:
            raise ValueError(f"save_survey_fits: {name} has shape {data.shape}, but the image has shape {image.shape}.")
        hdus.append(fits.ImageHDU(data.astype(dtype), header=wcs.copy(), name=name))
    if psf is not None:
        hdus.append(fits.ImageHDU(np.asarray(psf, np.float64), name="PSF"))
    path = Path(path)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def save_psf_fits(path: str | os.PathLike, kernel: Kernel, pixel_scale: float) -> Path:
    """Write a PSF kernel to its own FITS file (primary HDU, ``PIXSCALE`` in arcsec/pixel)."""
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.asarray(kernel, np.float64))
    hdu.header["PIXSCALE"] = (float(pixel_scale), "pixel scale [arcsec/pixel]")
    path = Path(path)
    hdu.writeto(path, overwrite=True)
    return path


def write_fits_products(
    out: str | os.PathLike,
    images: dict[str, Image],
    *,
    wcs_header=None,
    image_grid: PixelGrid | None = None,
    source_mean: Float[Array, "sy sx"] | None = None,
    source_sd: Float[Array, "sy sx"] | None = None,
    source_grid: PixelGrid | None = None,
) -> dict[str, Path]:
    """Write image-plane and source-plane products as FITS files with world coordinates.

    Parameters
    ----------
    out
        An existing directory (files ``out/<name>.fits``) or a prefix (``<out>_<name>.fits``).
    images
        Name -> ``(ny, nx)`` image-plane map (e.g. ``model``, ``lens_light``, ``lensed_source``,
        ``normalized_residual``); each gets the input image's WCS.
    wcs_header
        The input image's celestial WCS (``Observation.wcs_header``: text or astropy ``Header``);
        ``None`` writes ``PIXSCALE``/``CENTERX``/``CENTERY`` keywords only.
    image_grid
        The image :class:`~blindlens.grid.PixelGrid` (its ``center`` and ``pix2angle`` locate the
        frame origin ``(x, y) = (0, 0)`` on the sky); default: origin at the image centre.
    source_mean, source_sd
        Optional ``(sy, sx)`` source-plane maps on ``source_grid``, written as ``source_mean`` and
        ``source_sd`` with a source-plane WCS: a TAN projection at the sky position of the frame
        origin, ``CD = diag(ds, ds) / 3600`` (column ``i`` runs **east**, as in the source array,
        so the array is not flipped), ``CRPIX`` where ``(x, y) = (0, 0)`` falls on the source grid.
    source_grid
        The source :class:`~blindlens.grid.PixelGrid` (axis-aligned); needed with a source map.

    Returns
    -------
    dict
        Product name -> written path.
    """
    from astropy.io import fits

    out = Path(out)
    as_dir = out.is_dir() or str(out).endswith(os.sep)
    if as_dir:
        out.mkdir(parents=True, exist_ok=True)

    def target(name):
        return out / f"{name}.fits" if as_dir else out.parent / f"{out.name}_{name}.fits"

    shapes = {np.shape(v) for v in images.values()}
    shape = image_grid.shape if image_grid is not None else (next(iter(shapes)) if shapes else None)
    if any(len(s) != 2 or s != tuple(shape) for s in shapes):
        raise ValueError(f"write_fits_products: every image must be 2-D with the image-grid shape {shape}, "
                         f"got {sorted(shapes)}.")
    image_header = None if wcs_header is None else _as_header(wcs_header)
    written = {}
    for name, data in images.items():
        hdu = fits.PrimaryHDU(np.asarray(data, np.float32))
        if image_header is not None:
            hdu.header.extend(image_header, update=True)
        elif image_grid is not None:
            hdu.header["PIXSCALE"] = (float(image_grid.pixel_scale), "pixel scale [arcsec/pixel]")
            hdu.header["CENTERX"], hdu.header["CENTERY"] = image_grid.center
        hdu.header["PRODUCT"] = (name, "blindlens product")
        hdu.writeto(target(name), overwrite=True)
        written[name] = target(name)
    sources = {k: v for k, v in (("source_mean", source_mean), ("source_sd", source_sd)) if v is not None}
    if not sources:
        return written
    if source_grid is None or not source_grid.is_axis_aligned:
        raise ValueError("write_fits_products: source maps need source_grid= (the axis-aligned source PixelGrid).")
    sy, sx = source_grid.shape
    ds, (cx, cy) = float(source_grid.pixel_scale), source_grid.center
    source_header = None
    if image_header is not None:
        ra, dec = _frame_origin_on_sky(image_header, shape, image_grid)
        crpix = ((sx - 1) / 2 - cx / ds + 1, (sy - 1) / 2 - cy / ds + 1)  # 1-based pixel of (x, y) = (0, 0)
        source_header = _tan_header(np.diag([ds, ds]), (ra, dec), crpix)
    for name, data in sources.items():
        data = np.asarray(data, np.float32)
        if data.shape != (sy, sx):
            raise ValueError(f"write_fits_products: {name} has shape {data.shape}, but source_grid has shape {(sy, sx)}.")
        hdu = fits.PrimaryHDU(data)
        if source_header is not None:
            hdu.header.extend(source_header, update=True)
        hdu.header["PIXSCALE"] = (ds, "source pixel scale [arcsec/pixel]")
        hdu.header["CENTERX"], hdu.header["CENTERY"] = (float(cx), float(cy))
        hdu.header["PRODUCT"] = (name, "blindlens product")
        hdu.writeto(target(name), overwrite=True)
        written[name] = target(name)
    return written


def _frame_origin_on_sky(image_header, shape, image_grid) -> tuple[float, float]:
    """``(ra, dec)`` in degrees of the frame origin ``(x, y) = (0, 0)`` of an image with this WCS."""
    from astropy.wcs import WCS

    wcs = WCS(image_header).celestial
    if not wcs.has_celestial:
        raise ValueError("write_fits_products: wcs_header has no celestial axes; pass the input's celestial WCS.")
    ny, nx = shape
    center = (0.0, 0.0) if image_grid is None else image_grid.center
    m = np.asarray(image_grid.pix2angle) if image_grid is not None and image_grid.pix2angle else sky_frame_matrix(wcs)
    px, py = np.array([(nx - 1) / 2, (ny - 1) / 2]) - np.linalg.solve(m, np.asarray(center, np.float64))
    sky = wcs.pixel_to_world(px, py)
    return float(sky.icrs.ra.deg), float(sky.icrs.dec.deg)
