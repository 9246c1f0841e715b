"""Shared jaxtyping aliases.

Every public signature in blindlens uses these names, so shapes read the same everywhere.
Arrays follow the ``[row=y, col=x]`` convention.
"""

from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Scalar

__all__ = [
    "Array",
    "Bool",
    "Float",
    "Int",
    "PRNGKeyArray",
    "Scalar",
    "Image",
    "SourceImage",
    "Coordinates",
    "Kernel",
    "ScalarLike",
]

Image = Float[Array, "ny nx"]
"""An image-plane array (surface brightness per pixel, or a noise map)."""

SourceImage = Float[Array, "sy sx"]
"""A source-plane pixel array (surface brightness, same units as image pixels)."""

Coordinates = Float[Array, "..."]
"""Angular coordinates in arcsec, any shape (x and y come as two such arrays)."""

Kernel = Float[Array, "ky kx"]
"""A point-spread-function kernel, odd-sized, sampled at the image pixel scale, unit sum."""

ScalarLike = float | Float[Array, ""]
