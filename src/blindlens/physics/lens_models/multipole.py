"""Circular multipoles (:class:`Multipole`, lenstronomy ``MULTIPOLE``, Xu et al. 2013).

Pure functions ``deflection_multipole``, ``potential_multipole``, ``convergence_multipole``,
``hessian_multipole`` and the Equinox Module.  At the centre the direction is +x, as
lenstronomy's ``atan2(0, 0) = 0``.

References
----------
Xu D. et al., 2013, MNRAS 435, 607, App. B3, eq. B12 (circular multipoles, lenstronomy
``MULTIPOLE``).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._types import Array, Coordinates, Float, ScalarLike
from ._helpers import (
    _complex_offset,
    _floored,
    _hessian_from_kappa_gamma,
    _Pair,
    _Quad,
    _safe_modulus,
    _split,
)
from .base import AbstractLens, _param


def _check_multipole_order(m):
    if isinstance(m, bool) or int(m) != m or m < 2:
        raise ValueError(
            f"Multipole order m must be an integer >= 2 (lenstronomy MULTIPOLE, m >= 2 branch), "
            f"got m = {m!r}; m = 1 (log-divergent at the centre) is not implemented."
        )
    return int(m)


def _multipole_parts(x, y, m, phi_m, center_x, center_y):
    m = _check_multipole_order(m)
    z = _complex_offset(x, y, center_x, center_y)
    # at the centre use the direction +x, i.e. lenstronomy's atan2(0, 0) = 0
    modulus, unit, zero = _safe_modulus(z, unit_at_zero=1.0)
    # E = exp(i m (varphi - phi_m)); no atan2, so smooth in phi_m and positions
    phase = unit**m * jnp.exp(-1j * m * jnp.asarray(phi_m))
    return m, modulus, unit, zero, phase


@functools.partial(jax.jit, static_argnames=("m",))
def deflection_multipole(
    x: Coordinates, y: Coordinates, m: int, a_m: ScalarLike, phi_m: ScalarLike,
    center_x: ScalarLike = 0.0, center_y: ScalarLike = 0.0,
) -> _Pair:
    r"""Circular multipole deflection [arcsec] (lenstronomy ``MULTIPOLE``, Xu et al. 2013 B12).

    ``alpha_r = a_m/(1-m^2) cos(m(varphi - phi_m))``,
    ``alpha_varphi = -m a_m/(1-m^2) sin(m(varphi - phi_m))``; ``m >= 2``.

    Parameters
    ----------
    x, y
        Image-plane positions [arcsec], any broadcastable shapes.
    m
        Static integer order >= 2.
    a_m
        Multipole strength [arcsec].
    phi_m
        Orientation [rad], counter-clockwise from +x.
    center_x, center_y
        Centre [arcsec].

    Returns
    -------
    alpha_x, alpha_y
        Reduced deflection [arcsec], shape of ``x, y`` broadcast together.
    """
    m, _, unit, _, phase = _multipole_parts(x, y, m, phi_m, center_x, center_y)
    scale = a_m / (1 - m * m)
    alpha = scale * unit * (phase.real - 1j * m * phase.imag)
    return _split(alpha)


@functools.partial(jax.jit, static_argnames=("m",))
def potential_multipole(x, y, m, a_m, phi_m, center_x=0.0, center_y=0.0) -> Float[Array, "..."]:
    r"""Circular multipole potential ``psi = r a_m/(1 - m^2) cos(m(varphi - phi_m))``
    [arcsec^2] (Xu et al. 2013, App. B3)."""
    m, modulus, _, zero, phase = _multipole_parts(x, y, m, phi_m, center_x, center_y)
    return a_m / (1 - m * m) * jnp.where(zero, 0.0, modulus) * phase.real


@functools.partial(jax.jit, static_argnames=("m",))
def convergence_multipole(x, y, m, a_m, phi_m, center_x=0.0, center_y=0.0) -> Float[Array, "..."]:
    r"""Circular multipole convergence ``kappa = a_m cos(m(varphi - phi_m)) / (2 r)``."""
    _, modulus, _, zero, phase = _multipole_parts(x, y, m, phi_m, center_x, center_y)
    return a_m * phase.real / (2 * _floored(modulus, zero))


@functools.partial(jax.jit, static_argnames=("m",))
def hessian_multipole(x, y, m, a_m, phi_m, center_x=0.0, center_y=0.0) -> _Quad:
    r"""Circular multipole Hessian: ``kappa`` above, ``gamma = -kappa e^{2 i varphi}``
    (degree-1 homogeneous potential, as for the SIS)."""
    _, modulus, unit, zero, phase = _multipole_parts(x, y, m, phi_m, center_x, center_y)
    kappa = a_m * phase.real / (2 * _floored(modulus, zero))
    return _hessian_from_kappa_gamma(kappa, -kappa * unit**2)


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


class Multipole(AbstractLens):
    """Circular multipole of order ``m >= 2`` (lenstronomy ``MULTIPOLE``, Xu et al. 2013).

    ``psi = r a_m / (1 - m^2) cos(m (varphi - phi_m))``.

    Parameters
    ----------
    m
        Static integer order, ``m >= 2`` (3 and 4 are the usual choices).
    a_m
        Strength [arcsec] (lenstronomy's ``a_m``).
    phi_m
        Orientation [rad], counter-clockwise from +x.
    center_x, center_y
        Centre [arcsec].
    """

    m: int = eqx.field(static=True)
    a_m: Float[Array, "..."] = eqx.field(converter=_param)
    phi_m: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    center_x: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    center_y: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)

    def __check_init__(self):
        _check_multipole_order(self.m)

    @property
    def _params(self):
        return self.m, self.a_m, self.phi_m, self.center_x, self.center_y

    def deflection(self, x, y):
        return deflection_multipole(x, y, *self._params)

    def potential(self, x, y):
        return potential_multipole(x, y, *self._params)

    def convergence(self, x, y):
        return convergence_multipole(x, y, *self._params)

    def hessian(self, x, y):
        return hessian_multipole(x, y, *self._params)
