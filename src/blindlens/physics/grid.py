"""Regular pixel grids for the image and source planes.

Convention (shared by lenstronomy, caustics and herculens when no RA flip is applied):
arrays are indexed ``[row=y, col=x]``; pixel ``(j, i)`` is centred at

    x = center_x + (i - (nx - 1) / 2) * pixel_scale,
    y = center_y + (j - (ny - 1) / 2) * pixel_scale,

so row 0 holds the most negative y. Units are arcsec.

A grid may instead carry a general linear pixel -> angle map ``pix2angle = M`` (lenstronomy's
``transform_pix2angle``: a WCS CD matrix times 3600, arcsec per pixel; column 0 is the step of
one pixel along ``i`` (a column), column 1 along ``j`` (a row)). Pixel ``(j, i)`` then sits at

    (x, y) = (center_x, center_y) + M @ (i - (nx - 1) / 2, j - (ny - 1) / 2),

which describes a rotated and/or east-left (mirrored) sky frame; see ``docs/conventions.md``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._types import Array, Float

__all__ = ["PixelGrid"]

SQUARE_PIXEL_RTOL = 1e-2
"""Largest relative difference of the two pixel side lengths (and largest |cos| of the angle
between the pixel axes) accepted in a ``pix2angle`` matrix."""

Matrix2 = tuple[tuple[float, float], tuple[float, float]]


def _as_matrix(value) -> Matrix2 | None:
    """``pix2angle`` as a hashable ``((a, b), (c, d))`` of floats, validated; ``None`` stays ``None``."""
    if value is None:
        return None
    m = np.asarray(value, dtype=np.float64)
    if m.shape != (2, 2) or not np.all(np.isfinite(m)):
        raise ValueError(f"PixelGrid pix2angle must be a finite 2x2 matrix (arcsec per pixel), got {value!r}.")
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    if det == 0:
        raise ValueError("PixelGrid pix2angle is singular (det = 0); give the WCS CD matrix times 3600 (arcsec/pixel).")
    len_i, len_j = math.hypot(m[0, 0], m[1, 0]), math.hypot(m[0, 1], m[1, 1])
    skew = abs(m[0, 0] * m[0, 1] + m[1, 0] * m[1, 1]) / (len_i * len_j)
    if abs(len_i - len_j) > SQUARE_PIXEL_RTOL * max(len_i, len_j) or skew > SQUARE_PIXEL_RTOL:
        raise ValueError(
            f"PixelGrid pix2angle describes non-square pixels (sides {len_i:.6g}\" and {len_j:.6g}\", "
            f"axis |cos| {skew:.3g}); resample the image onto square pixels first (e.g. a drizzled frame)."
        )
    return ((float(m[0, 0]), float(m[0, 1])), (float(m[1, 0]), float(m[1, 1])))


class PixelGrid(eqx.Module):
    """A regular grid of square pixels, axis-aligned or in a rotated / mirrored sky frame.

    Parameters
    ----------
    shape
        ``(ny, nx)``, number of rows and columns.
    pixel_scale
        Pixel side length in arcsec. With ``pix2angle`` it may be ``None`` (then
        ``sqrt(|det pix2angle|)``); if given it must equal that within 1e-6 (relative).
    center
        ``(center_x, center_y)`` of the grid in arcsec.
    pix2angle
        Optional ``2 x 2`` pixel -> angle matrix in arcsec/pixel (lenstronomy's
        ``transform_pix2angle``, the WCS CD matrix times 3600); columns are the steps of one pixel
        along ``i`` (column index) and ``j`` (row index). ``None`` (default) is the axis-aligned
        grid ``diag(pixel_scale, pixel_scale)``, with bit-identical coordinates. Pixels must be
        square within 1% (no resampling is done here).

    Raises
    ------
    ValueError
        On a bad shape, a non-positive pixel scale, or a singular / non-square ``pix2angle``.
    """

    shape: tuple[int, int] = eqx.field(static=True)
    pixel_scale: float = eqx.field(static=True)
    center: tuple[float, float] = eqx.field(static=True, default=(0.0, 0.0))
    pix2angle: Matrix2 | None = eqx.field(static=True, default=None)

    def __init__(self, shape, pixel_scale=None, center=(0.0, 0.0), pix2angle=None):
        self.shape = tuple(int(n) for n in shape) if np.ndim(shape) == 1 else shape
        self.center = center
        self.pix2angle = _as_matrix(pix2angle)
        if self.pix2angle is not None:
            (a, b), (c, d) = self.pix2angle
            derived = math.sqrt(abs(a * d - b * c))
            if pixel_scale is None:
                pixel_scale = derived
            elif not abs(float(pixel_scale) - derived) <= 1e-6 * derived:
                raise ValueError(
                    f"PixelGrid pixel_scale {pixel_scale} disagrees with sqrt(|det pix2angle|) = {derived:.9g}; "
                    "pass pixel_scale=None to derive it from pix2angle."
                )
        elif pixel_scale is None:
            raise ValueError("PixelGrid needs a pixel_scale (arcsec/pixel) or a pix2angle matrix.")
        self.pixel_scale = pixel_scale

    def __check_init__(self):
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"PixelGrid shape must be (ny, nx) with positive sizes, got {self.shape}.")
        if not self.pixel_scale > 0:
            raise ValueError(f"PixelGrid pixel_scale must be positive (arcsec/pixel), got {self.pixel_scale}.")

    @property
    def ny(self) -> int:
        return self.shape[0]

    @property
    def nx(self) -> int:
        return self.shape[1]

    @property
    def is_axis_aligned(self) -> bool:
        """True when the pixel axes are the x and y axes (no ``pix2angle``, or a diagonal one)."""
        return self.pix2angle is None or (self.pix2angle[0][1] == 0 and self.pix2angle[1][0] == 0)

    def _axis_steps(self, what: str) -> tuple[float, float]:
        if self.pix2angle is None:
            return self.pixel_scale, self.pixel_scale
        if not self.is_axis_aligned:
            raise ValueError(
                f"PixelGrid.{what} is defined only for axis-aligned grids, but this grid is rotated "
                "(pix2angle has off-diagonal terms); use grid.coordinates() or grid.pixel_corners()."
            )
        return self.pix2angle[0][0], self.pix2angle[1][1]

    @property
    def x_coords(self) -> Float[Array, " nx"]:
        """Pixel-centre x coordinates of the columns, arcsec (axis-aligned grids only)."""
        step = self._axis_steps("x_coords")[0]
        i = jnp.arange(self.nx)
        return self.center[0] + (i - (self.nx - 1) / 2) * step

    @property
    def y_coords(self) -> Float[Array, " ny"]:
        """Pixel-centre y coordinates of the rows, arcsec (axis-aligned grids only)."""
        step = self._axis_steps("y_coords")[1]
        j = jnp.arange(self.ny)
        return self.center[1] + (j - (self.ny - 1) / 2) * step

    def coordinates(self) -> tuple[Float[Array, "ny nx"], Float[Array, "ny nx"]]:
        """Return ``(x, y)`` pixel-centre coordinate maps in arcsec, each ``(ny, nx)``."""
        if self.pix2angle is None:
            x, y = jnp.meshgrid(self.x_coords, self.y_coords, indexing="xy")
            return x, y
        x, y = self.subpixel_coordinates()
        return jnp.asarray(x), jnp.asarray(y)

    def subpixel_coordinates(self, supersampling: int = 1, pad: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
        """Sub-pixel centre coordinate maps ``(x, y)`` in arcsec, as float64 numpy arrays.

        The grid is first extended by ``pad = (py, px)`` pixels on each side, then every pixel is
        split into ``supersampling x supersampling`` sub-pixels; both maps have shape
        ``((ny + 2 py) k, (nx + 2 px) k)`` and sub-pixel ``(j, i)`` lies in padded pixel
        ``(j // k, i // k)``. This is the ray layout of
        :class:`~blindlens.lensing_operator.LensingOperator` and the Sérsic pre-fit.
        """
        k = int(supersampling)
        if k != supersampling or k < 1:
            raise ValueError(f"supersampling must be a positive integer, got {supersampling}.")
        py, px = (int(p) for p in pad)
        ny, nx = (self.ny + 2 * py) * k, (self.nx + 2 * px) * k
        u = np.arange(nx) - (nx - 1) / 2  # sub-pixel offsets from the centre, in sub-pixels
        v = np.arange(ny) - (ny - 1) / 2
        cx, cy = self.center
        if self.pix2angle is None:
            step = self.pixel_scale / k
            return np.meshgrid(cx + u * step, cy + v * step, indexing="xy")
        (a, b), (c, d) = self.pix2angle
        x = cx + ((a / k) * u[None, :] + (b / k) * v[:, None])
        y = cy + ((c / k) * u[None, :] + (d / k) * v[:, None])
        return x, y

    def pixel_to_angle(self, i, j) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` in arcsec of (fractional) pixel positions ``i`` (column) and ``j`` (row)."""
        du = np.asarray(i, np.float64) - (self.nx - 1) / 2
        dv = np.asarray(j, np.float64) - (self.ny - 1) / 2
        (a, b), (c, d) = self.pix2angle or ((self.pixel_scale, 0.0), (0.0, self.pixel_scale))
        return self.center[0] + a * du + b * dv, self.center[1] + c * du + d * dv

    def pixel_corners(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the pixel corners in arcsec, each ``(ny + 1, nx + 1)`` (for ``pcolormesh``)."""
        i, j = np.meshgrid(np.arange(self.nx + 1) - 0.5, np.arange(self.ny + 1) - 0.5, indexing="xy")
        return self.pixel_to_angle(i, j)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` of the pixel edges, for ``imshow(origin="lower")``.

        For a mirrored axis-aligned grid (negative diagonal ``pix2angle``) the first value of a pair
        is the edge of pixel 0, so ``imshow`` draws the axis reversed. Rotated grids have no
        ``imshow`` extent: use :meth:`show` (``pcolormesh`` on :meth:`pixel_corners`) and :attr:`bounds`.
        """
        sx, sy = self._axis_steps("extent")
        half_x = self.nx * sx / 2
        half_y = self.ny * sy / 2
        cx, cy = self.center
        return (cx - half_x, cx + half_x, cy - half_y, cy + half_y)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` in arcsec of the box enclosing every pixel corner."""
        x, y = self.pixel_corners()
        return (float(x.min()), float(x.max()), float(y.min()), float(y.max()))

    def show(self, ax, image, **kwargs):
        """Draw ``image`` (``(ny, nx)``) on a matplotlib ``ax`` in the x/y frame; returns the artist.

        Axis-aligned grids use ``ax.imshow(origin="lower", extent=self.extent)``; rotated ones
        ``ax.pcolormesh`` on the pixel corners with an equal aspect. ``kwargs`` go to that call
        (``cmap``, ``vmin``, ``vmax``, ...).
        """
        data = np.asarray(image)
        if self.is_axis_aligned:
            return ax.imshow(data, origin="lower", extent=self.extent, **kwargs)
        x, y = self.pixel_corners()
        artist = ax.pcolormesh(x, y, data, shading="flat", **kwargs)
        ax.set_aspect("equal")
        return artist

    @property
    def pixel_area(self) -> float:
        """Pixel solid angle in arcsec^2."""
        return self.pixel_scale**2

    def supersampled(self, factor: int) -> PixelGrid:
        """The grid of ``factor x factor`` sub-pixels covering the same field.

        Sub-pixel ``(j, i)`` lies in native pixel ``(j // factor, i // factor)``; a ``pix2angle``
        is divided by ``factor``.
        """
        if int(factor) != factor or factor < 1:
            raise ValueError(f"supersampling factor must be a positive integer, got {factor}.")
        factor = int(factor)
        m = None if self.pix2angle is None else np.asarray(self.pix2angle) / factor
        return PixelGrid(
            (self.ny * factor, self.nx * factor), self.pixel_scale / factor, self.center, pix2angle=m
        )
