"""Source draws in the source plane's own frame when the grid's placement was sampled.

With ``--source-shift sampled`` (:func:`~blindlens.inference.source_shift_model.with_source_shift`)
every draw carries a constant deflection ``alpha = (alpha_x, alpha_y)``: a ray that reaches grid
coordinate ``g`` left the source plane at ``beta = theta - alpha_mass(theta) = g + alpha``. The
source array of a draw is therefore its grid's picture, moved by ``-alpha`` from where the galaxy
lies, and draws at different placements (chains settle at different ones) must not be averaged
pixel by pixel. :func:`to_source_frame` puts each draw into the source plane's frame on the same
grid: the value at pixel centre ``x`` is the model's own bilinear interpolant of the draw at
``x - alpha`` (zero outside the grid, as in the model), so the registered map is the source the
model images show, sampled at the grid's pixel centres. Caustics move the same way:
``beta = beta_grid + alpha``.

The bilinear resampling smooths a draw by up to half a pixel, so pixelwise standard deviations of
registered draws are slightly lower than the raw draws' would be at a fixed placement. The raw
draws stay in the posterior unchanged (they are the sampler's state); the summary maps, the FITS
products and the figures show registered ones.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._types import Array, Float
from ..inference.source_shift_model import SOURCE_SHIFT_SITES
from ..physics.grid import PixelGrid
from ..physics.lens_models import Shift
from ..physics.lensing_operator import LensingOperator

__all__ = ["placement_offsets", "to_source_frame"]


def placement_offsets(idata) -> Float[np.ndarray, "n 2"] | None:
    """The sampled grid placement ``(alpha_x, alpha_y)`` [arcsec] of every draw, or ``None``.

    Draws are flattened over ``(chain, draw)`` in that order. ``None`` when the run did not sample
    the placement: the posterior attribute ``blindlens_nuisance_sites`` (written by
    :func:`~blindlens.arviz_conversion.to_inference_data`) does not list both sites.
    """
    from .posterior_figures import nuisance_parameter_names

    post = idata.posterior
    nuisance = nuisance_parameter_names(idata)
    if not all(name in nuisance and name in post.data_vars for name in SOURCE_SHIFT_SITES):
        return None
    return np.stack([np.asarray(post[name].values, float).reshape(-1) for name in SOURCE_SHIFT_SITES], axis=-1)


@eqx.filter_jit
def _register(sources, offsets, grid):
    def one(source, alpha):
        return LensingOperator(Shift(alpha_x=alpha[0], alpha_y=alpha[1]), grid, grid)(source)

    return jax.lax.map(lambda a: one(*a), (sources, offsets))


def to_source_frame(
    sources: Float[Array, "n sy sx"] | np.ndarray,
    offsets: Float[Array, "n 2"] | np.ndarray | None,
    grid: PixelGrid,
) -> np.ndarray:
    """Source draws moved from their grid's placement into the source plane's frame (module docs).

    Parameters
    ----------
    sources
        ``(n, sy, sx)`` source draws on ``grid`` (surface brightness, image units per pixel).
    offsets
        ``(n, 2)`` placement ``(alpha_x, alpha_y)`` of each draw [arcsec]
        (:func:`placement_offsets`); ``None`` returns ``sources`` unchanged.
    grid
        The source grid (:class:`~blindlens.grid.PixelGrid`).

    Returns
    -------
    ``(n, sy, sx)`` float array: draw ``k`` at pixel centre ``x`` is its bilinear interpolant at
    ``x - offsets[k]``.
    """
    sources = np.asarray(sources)
    if offsets is None:
        return sources
    offsets = np.asarray(offsets, float)
    if sources.ndim != 3 or tuple(sources.shape[1:]) != tuple(grid.shape) or offsets.shape != (sources.shape[0], 2):
        raise ValueError(f"to_source_frame needs (n, {grid.shape[0]}, {grid.shape[1]}) sources and (n, 2) offsets, "
                         f"got {sources.shape} and {offsets.shape}.")
    dtype = sources.dtype if np.issubdtype(sources.dtype, np.floating) else np.float32
    dtype = jax.dtypes.canonicalize_dtype(dtype)  # float64 draws from a netCDF: float32 unless x64 is on
    return np.asarray(_register(jnp.asarray(sources, dtype), jnp.asarray(offsets, dtype), grid))
