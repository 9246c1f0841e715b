"""Regular pixel grids for the image and source planes.

Convention (shared by lenstronomy, caustics and herculens when no RA flip is applied):
arrays are indexed ``[row=y, col=x]``; pixel ``(j, i)`` is centred at

    x = center_x + (i - (nx - 1) / 2) * pixel_scale,
    y = center_y + (j - (ny - 1) / 2) * pixel_scale,

so row 0 holds the most negative y. Units are arcsec.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from ._types import Array, Float

__all__ = ["PixelGrid"]


class PixelGrid(eqx.Module):
    """A regular, axis-aligned grid of square pixels.

    Parameters
    ----------
    shape
        ``(ny, nx)``, number of rows and columns.
    pixel_scale
        Pixel side length in arcsec.
    center
        ``(center_x, center_y)`` of the grid in arcsec.
    """

    shape: tuple[int, int] = eqx.field(static=True)
    pixel_scale: float = eqx.field(static=True)
    center: tuple[float, float] = eqx.field(static=True, default=(0.0, 0.0))

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
    def x_coords(self) -> Float[Array, " nx"]:
        """Pixel-centre x coordinates of the columns, arcsec."""
        i = jnp.arange(self.nx)
        return self.center[0] + (i - (self.nx - 1) / 2) * self.pixel_scale

    @property
    def y_coords(self) -> Float[Array, " ny"]:
        """Pixel-centre y coordinates of the rows, arcsec."""
        j = jnp.arange(self.ny)
        return self.center[1] + (j - (self.ny - 1) / 2) * self.pixel_scale

    def coordinates(self) -> tuple[Float[Array, "ny nx"], Float[Array, "ny nx"]]:
        """Return ``(x, y)`` pixel-centre coordinate maps in arcsec, each ``(ny, nx)``."""
        x, y = jnp.meshgrid(self.x_coords, self.y_coords, indexing="xy")
        return x, y

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` of the pixel edges, for ``imshow(origin="lower")``."""
        half_x = self.nx * self.pixel_scale / 2
        half_y = self.ny * self.pixel_scale / 2
        cx, cy = self.center
        return (cx - half_x, cx + half_x, cy - half_y, cy + half_y)

    @property
    def pixel_area(self) -> float:
        """Pixel solid angle in arcsec^2."""
        return self.pixel_scale**2

    def supersampled(self, factor: int) -> PixelGrid:
        """The grid of ``factor x factor`` sub-pixels covering the same field.

        Sub-pixel ``(j, i)`` lies in native pixel ``(j // factor, i // factor)``.
        """
        if int(factor) != factor or factor < 1:
            raise ValueError(f"supersampling factor must be a positive integer, got {factor}.")
        factor = int(factor)
        return PixelGrid(
            (self.ny * factor, self.nx * factor), self.pixel_scale / factor, self.center
        )
