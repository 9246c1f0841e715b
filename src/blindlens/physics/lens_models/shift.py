"""A constant deflection (:class:`Shift`, lenstronomy ``SHIFT``): a translation of the source plane.

``alpha = (alpha_x, alpha_y)`` everywhere, potential ``psi = alpha_x x + alpha_y y``, no convergence
and no shear. Added to a lens it moves every ray's source-plane position by ``-alpha``, so it is
unobservable for a continuous source (the source's own position absorbs it) and matters only for a
source drawn on a pixel grid: it is the grid's sub-pixel placement relative to the source, the
nuisance :func:`blindlens.inference.source_shift_model.with_source_shift` marginalises.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._types import Array, Coordinates, Float, ScalarLike
from ._helpers import _as_coordinates, _Pair, _Quad
from .base import AbstractLens, _param


@jax.jit
def deflection_shift(x: Coordinates, y: Coordinates, alpha_x: ScalarLike, alpha_y: ScalarLike) -> _Pair:
    """Constant deflection ``(alpha_x, alpha_y)`` [arcsec] at every position (lenstronomy ``SHIFT``).

    Parameters
    ----------
    x, y
        Image-plane positions [arcsec], any broadcastable shapes.
    alpha_x, alpha_y
        The deflection [arcsec].

    Returns
    -------
    alpha_x, alpha_y
        Arrays of the shape of ``x, y`` broadcast together.
    """
    x, y = _as_coordinates(x, y)
    return jnp.zeros_like(x) + alpha_x, jnp.zeros_like(y) + alpha_y


@jax.jit
def potential_shift(x, y, alpha_x, alpha_y) -> Float[Array, "..."]:
    """Potential ``psi = alpha_x x + alpha_y y`` [arcsec^2] (its gradient is the deflection)."""
    x, y = _as_coordinates(x, y)
    return alpha_x * x + alpha_y * y


@jax.jit
def convergence_shift(x, y, alpha_x, alpha_y) -> Float[Array, "..."]:
    """A constant deflection has zero convergence."""
    x, _ = _as_coordinates(x, y)
    return jnp.zeros_like(x) * (alpha_x + alpha_y)


@jax.jit
def hessian_shift(x, y, alpha_x, alpha_y) -> _Quad:
    """Zero Hessian ``(f_xx, f_xy, f_yx, f_yy)``."""
    zero = convergence_shift(x, y, alpha_x, alpha_y)
    return zero, zero, zero, zero


class Shift(AbstractLens):
    """A constant deflection ``(alpha_x, alpha_y)`` [arcsec] (lenstronomy ``SHIFT``).

    Parameters
    ----------
    alpha_x, alpha_y
        Deflection [arcsec]; the source plane moves by ``-alpha`` relative to the lens.
    """

    alpha_x: Float[Array, "..."] = eqx.field(converter=_param)
    alpha_y: Float[Array, "..."] = eqx.field(converter=_param)

    @property
    def _params(self):
        return self.alpha_x, self.alpha_y

    def deflection(self, x, y):
        return deflection_shift(x, y, *self._params)

    def potential(self, x, y):
        return potential_shift(x, y, *self._params)

    def convergence(self, x, y):
        return convergence_shift(x, y, *self._params)

    def hessian(self, x, y):
        return hessian_shift(x, y, *self._params)
