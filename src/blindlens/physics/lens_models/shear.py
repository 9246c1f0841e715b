"""External shear (:class:`ExternalShear`, lenstronomy ``SHEAR``).

Pure functions ``deflection_shear``, ``potential_shear``, ``convergence_shear``,
``hessian_shear`` and the Equinox Module.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._types import Array, Coordinates, Float, ScalarLike
from ._helpers import _as_coordinates, _Pair, _Quad
from .base import AbstractLens, _param


@jax.jit
def deflection_shear(
    x: Coordinates, y: Coordinates, gamma1: ScalarLike, gamma2: ScalarLike,
    ra_0: ScalarLike = 0.0, dec_0: ScalarLike = 0.0,
) -> _Pair:
    r"""External shear deflection ``(g1 x + g2 y, g2 x - g1 y)`` [arcsec], relative to
    ``(ra_0, dec_0)`` (lenstronomy ``SHEAR``; Meneghetti, *Introduction to Gravitational
    Lensing*, eq. 3.80).

    Parameters
    ----------
    x, y
        Image-plane positions [arcsec], any broadcastable shapes.
    gamma1, gamma2
        Shear components (dimensionless).
    ra_0, dec_0
        Point of zero deflection [arcsec].

    Returns
    -------
    alpha_x, alpha_y
        Reduced deflection [arcsec], shape of ``x, y`` broadcast together.
    """
    x, y = _as_coordinates(x, y)
    dx, dy = x - ra_0, y - dec_0
    return gamma1 * dx + gamma2 * dy, gamma2 * dx - gamma1 * dy


@jax.jit
def potential_shear(x, y, gamma1, gamma2, ra_0=0.0, dec_0=0.0) -> Float[Array, "..."]:
    r"""External shear potential ``psi = g1 (x^2 - y^2)/2 + g2 x y`` [arcsec^2]."""
    x, y = _as_coordinates(x, y)
    dx, dy = x - ra_0, y - dec_0
    return 0.5 * gamma1 * (dx * dx - dy * dy) + gamma2 * dx * dy


@jax.jit
def convergence_shear(x, y, gamma1, gamma2, ra_0=0.0, dec_0=0.0) -> Float[Array, "..."]:
    """External shear has zero convergence."""
    x, _ = _as_coordinates(x, y)
    return jnp.zeros_like(x) * (gamma1 + gamma2)


@jax.jit
def hessian_shear(x, y, gamma1, gamma2, ra_0=0.0, dec_0=0.0) -> _Quad:
    """External shear Hessian ``(g1, g2, g2, -g1)`` (constant)."""
    x, _ = _as_coordinates(x, y)
    zero = jnp.zeros_like(x)
    g1 = zero + gamma1
    g2 = zero + gamma2
    return g1, g2, g2, -g1


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


class ExternalShear(AbstractLens):
    """External shear ``psi = gamma1 (x^2 - y^2)/2 + gamma2 x y`` (lenstronomy ``SHEAR``).

    Parameters
    ----------
    gamma1, gamma2
        Shear components (dimensionless); ``gamma1 = g cos 2 phi``, ``gamma2 = g sin 2 phi``.
    ra_0, dec_0
        Point of zero shear deflection [arcsec] (only adds a constant deflection).
    """

    gamma1: Float[Array, "..."] = eqx.field(converter=_param)
    gamma2: Float[Array, "..."] = eqx.field(converter=_param)
    ra_0: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    dec_0: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)

    @property
    def _params(self):
        return self.gamma1, self.gamma2, self.ra_0, self.dec_0

    def deflection(self, x, y):
        return deflection_shear(x, y, *self._params)

    def potential(self, x, y):
        return potential_shear(x, y, *self._params)

    def convergence(self, x, y):
        return convergence_shear(x, y, *self._params)

    def hessian(self, x, y):
        return hessian_shear(x, y, *self._params)
