"""Plotting helpers of :mod:`blindlens.lens_models`: ``det A`` maps, critical curves and caustics."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..._types import Image
from ..grid import PixelGrid
from .base import AbstractLens


def inverse_magnification_map(lens: AbstractLens, grid: PixelGrid) -> Image:
    """``det A`` at the pixel centres of ``grid`` (``[row=y, col=x]``); contour it at 0 to
    draw critical curves."""
    x, y = grid.coordinates()
    return lens.inverse_magnification(x, y)


def critical_curves_and_caustics(
    lens: AbstractLens, grid: PixelGrid, supersampling: int = 4
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Critical curves (``det A = 0``) and their caustics, as lists of ``(n, 2)`` ``(x, y)``
    polylines in arcsec, for plots.

    The zero contour of :func:`inverse_magnification_map` on ``grid.supersampled(supersampling)``
    is traced with ``contourpy`` (matplotlib's contouring engine, imported lazily here only);
    caustics are the critical curves mapped through :meth:`AbstractLens.ray_shoot`.  Accuracy is
    that of linear interpolation on the sampled grid.
    """
    try:
        import contourpy
    except ImportError as err:  # pragma: no cover - contourpy ships with matplotlib
        raise ValueError(
            "critical_curves_and_caustics needs contourpy (installed with matplotlib); "
            "install matplotlib or contour inverse_magnification_map yourself."
        ) from err
    fine = grid.supersampled(supersampling)
    det = np.asarray(inverse_magnification_map(lens, fine), dtype=float)
    if fine.is_axis_aligned:
        x, y = np.asarray(fine.x_coords, float), np.asarray(fine.y_coords, float)
    else:  # a rotated sky-frame grid: contour on the 2-D coordinate maps
        x, y = fine.subpixel_coordinates()
    gen = contourpy.contour_generator(x=x, y=y, z=det, line_type="Separate")
    critical = [np.asarray(line) for line in gen.lines(0.0) if len(line) > 1]
    caustics = []
    for line in critical:
        bx, by = lens.ray_shoot(jnp.asarray(line[:, 0]), jnp.asarray(line[:, 1]))
        caustics.append(np.stack([np.asarray(bx), np.asarray(by)], axis=-1))
    return critical, caustics
