"""Non-parametric morphology summaries of source images.

Used to compare prior samples with real galaxies and as low-dimensional source summaries for
calibration tests (TARP on flux, centroid and size). All functions take ``(..., H, W)`` arrays and
a pixel scale (arcsec/pixel); negative pixels are clipped to zero for the moment-based sizes
(posterior and prior samples may carry small negative noise), but not for the total flux.

Definitions (Conselice 2003 for the concentration; standard second moments for the ellipticity):

* ``flux``: sum of pixel values times the pixel area (surface brightness x arcsec^2);
* ``centroid``: flux-weighted mean position (arcsec, blindlens grid convention, centred grid);
* ``half_light_radius``: radius around the centroid enclosing half of the (clipped) flux (arcsec);
* ``ellipticity``: ``|e|`` with ``e = (Q_xx - Q_yy, 2 Q_xy) / (Q_xx + Q_yy)``;
* ``concentration``: ``C = 5 log10(r_80 / r_20)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["morphology_summaries"]


def _coords(h: int, w: int, pixel_scale: float):
    y = (np.arange(h) - (h - 1) / 2) * pixel_scale
    x = (np.arange(w) - (w - 1) / 2) * pixel_scale
    return np.meshgrid(x, y, indexing="xy")


def _radius_enclosing(images, r, fraction):
    order = np.argsort(r.reshape(-1))
    r_sorted = r.reshape(-1)[order]
    flat = images.reshape(images.shape[0], -1)[:, order]
    cum = np.cumsum(flat, axis=1)
    total = cum[:, -1:]
    idx = np.argmax(cum >= fraction * total, axis=1)
    return r_sorted[idx]


def morphology_summaries(images: np.ndarray, pixel_scale: float) -> dict[str, np.ndarray]:
    """Flux, centroid (x, y), half-light radius, ellipticity and concentration per image.

    Parameters
    ----------
    images
        ``(N, H, W)`` or ``(H, W)`` surface-brightness arrays.
    pixel_scale
        arcsec/pixel.

    Returns
    -------
    dict of arrays of shape ``(N,)``: ``flux, centroid_x, centroid_y, half_light_radius,
    ellipticity, concentration``.
    """
    images = np.asarray(images, np.float64)
    if images.ndim == 2:
        images = images[None]
    n, h, w = images.shape
    x, y = _coords(h, w, pixel_scale)
    flux = images.sum(axis=(1, 2)) * pixel_scale**2
    pos = np.clip(images, 0, None)
    total = pos.sum(axis=(1, 2)) + 1e-30
    cx = (pos * x).sum(axis=(1, 2)) / total
    cy = (pos * y).sum(axis=(1, 2)) / total
    dx = x[None] - cx[:, None, None]
    dy = y[None] - cy[:, None, None]
    qxx = (pos * dx**2).sum(axis=(1, 2)) / total
    qyy = (pos * dy**2).sum(axis=(1, 2)) / total
    qxy = (pos * dx * dy).sum(axis=(1, 2)) / total
    ellipticity = np.hypot(qxx - qyy, 2 * qxy) / (qxx + qyy + 1e-30)
    r50, r20, r80 = (np.empty(n) for _ in range(3))
    for i in range(n):
        r = np.hypot(x - cx[i], y - cy[i])
        r50[i], r20[i], r80[i] = (_radius_enclosing(pos[i : i + 1], r, f)[0] for f in (0.5, 0.2, 0.8))
    # r_20 of a very compact source can fall on the central pixel (r ~ 0): floor at half a pixel
    concentration = 5 * np.log10(np.maximum(r80, pixel_scale / 2) / np.maximum(r20, pixel_scale / 2))
    return {
        "flux": flux,
        "centroid_x": cx,
        "centroid_y": cy,
        "half_light_radius": r50,
        "ellipticity": ellipticity,
        "concentration": concentration,
    }
