"""Isothermal profiles: the singular isothermal sphere (:class:`SIS`) and ellipsoid (:class:`SIE`).

Pure functions ``deflection_<name>``, ``potential_<name>``, ``convergence_<name>``,
``hessian_<name>`` and the Equinox Modules, in lenstronomy's ``SIS`` / ``SIE`` conventions
(see :mod:`blindlens.lens_models` for the ellipticity-free complex formulation).

References
----------
Schneider P., Ehlers J., Falco E. E., 1992, *Gravitational Lenses* (SIS, eq. 8.34).
Kormann R., Schneider P., Bartelmann M., 1994, A&A 284, 285 (SIE closed form).
Keeton C. R., 2001, arXiv:astro-ph/0102341 (SIE/NIE formulas as used by lenstronomy).
Tessore N., Metcalf R. B., 2015, A&A 580, A79 (shear, eq. 17 with t = 1).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._types import Array, Coordinates, Float, ScalarLike
from ._helpers import (
    _as_coordinates,
    _check_ellipticity,
    _check_nonnegative,
    _complex_offset,
    _floored,
    _hessian_from_kappa_gamma,
    _Pair,
    _Quad,
    _safe_modulus,
    _split,
)
from .base import AbstractLens, _param

# |e| below which the SIE uses the Taylor series of arctan(sqrt(zeta))/sqrt(zeta), |zeta| = |e|
# (5 terms: truncation error < |e|^6/13 < 1e-19, far below float64 rounding).
_SERIES_SWITCH = 1e-3


# --------------------------------------------------------------------------------------------
# SIS
# --------------------------------------------------------------------------------------------


@jax.jit
def deflection_sis(
    x: Coordinates, y: Coordinates, theta_E: ScalarLike, center_x: ScalarLike = 0.0,
    center_y: ScalarLike = 0.0,
) -> _Pair:
    r"""Singular isothermal sphere deflection ``alpha = theta_E (x, y) / r`` [arcsec].

    Schneider, Ehlers & Falco (1992), eq. 8.34.  Zero at the exact centre (as lenstronomy).

    Parameters
    ----------
    x, y
        Image-plane positions [arcsec], any broadcastable shapes.
    theta_E
        Einstein radius [arcsec].
    center_x, center_y
        Lens centre [arcsec].

    Returns
    -------
    alpha_x, alpha_y
        Reduced deflection [arcsec], shape of ``x, y`` broadcast together.
    """
    z = _complex_offset(x, y, center_x, center_y)
    _, unit, _ = _safe_modulus(z)
    return _split(theta_E * unit)


@jax.jit
def potential_sis(x, y, theta_E, center_x=0.0, center_y=0.0) -> Float[Array, "..."]:
    r"""SIS lensing potential ``psi = theta_E r`` [arcsec^2]."""
    z = _complex_offset(x, y, center_x, center_y)
    modulus, _, zero = _safe_modulus(z)
    return theta_E * jnp.where(zero, 0.0, modulus)


@jax.jit
def convergence_sis(x, y, theta_E, center_x=0.0, center_y=0.0) -> Float[Array, "..."]:
    r"""SIS convergence ``kappa = theta_E / (2 r)`` (dimensionless)."""
    z = _complex_offset(x, y, center_x, center_y)
    modulus, _, zero = _safe_modulus(z)
    return theta_E / (2 * _floored(modulus, zero))


@jax.jit
def hessian_sis(x, y, theta_E, center_x=0.0, center_y=0.0) -> _Quad:
    r"""SIS Hessian of the potential: ``kappa`` above and shear ``gamma = -kappa e^{2 i varphi}``.

    For a potential homogeneous of degree 1 in r, ``gamma1 + i gamma2 = -kappa z / z*``
    (Tessore & Metcalf 2015, eq. 17 with t = 1).
    """
    z = _complex_offset(x, y, center_x, center_y)
    modulus, unit, zero = _safe_modulus(z)
    kappa = theta_E / (2 * _floored(modulus, zero))
    return _hessian_from_kappa_gamma(kappa, -kappa * unit**2)


# --------------------------------------------------------------------------------------------
# SIE
# --------------------------------------------------------------------------------------------


def _sie_parts(x, y, theta_E, e1, e2, center_x, center_y):
    z = _complex_offset(x, y, center_x, center_y)
    w = z - (e1 + 1j * e2) * jnp.conj(z)
    modulus_w, unit_w, zero = _safe_modulus(w)
    b_e = theta_E * jnp.sqrt(1 - e1 * e1 - e2 * e2)
    return z, modulus_w, unit_w, zero, b_e


def _sie_alpha_round(dx, dy, theta_E, e1, e2):
    """SIE deflection from the ellipticity-free complex form with the Taylor series of ``G``;
    exact to rounding for ``|e| < 1e-3`` (truncation ``|e|^6 / 13``) and smooth through e = 0."""
    z = dx + 1j * dy
    _, unit_w, _ = _safe_modulus(z - (e1 + 1j * e2) * jnp.conj(z))
    zeta = (e1 - 1j * e2) * unit_w**2
    series = 1 + zeta * (-1 / 3 + zeta * (1 / 5 + zeta * (-1 / 7 + zeta * (1 / 9 - zeta / 11))))
    alpha = theta_E * jnp.sqrt(1 - e1 * e1 - e2 * e2) * unit_w * series
    return alpha.real, alpha.imag


def _sie_alpha_keeton(dx, dy, theta_E, e1, e2):
    """SIE deflection from the real closed form in the major-axis frame (Keeton 2001 with
    lenstronomy's ``b = theta_E sqrt(q)``); 3-4x cheaper than complex ``arctan``.  Only used
    for ``|e| >= 1e-3``, where ``phi = atan2(e2, e1)/2`` and ``|e|`` are smooth."""
    e_abs = jnp.sqrt(e1 * e1 + e2 * e2)
    q = (1 - e_abs) / (1 + e_abs)
    f = 2 * jnp.sqrt(e_abs) / (1 + e_abs)  # sqrt(1 - q^2) without cancellation
    phi = 0.5 * jnp.arctan2(e2, e1)
    cos, sin = jnp.cos(phi), jnp.sin(phi)
    xp = cos * dx + sin * dy
    yp = -sin * dx + cos * dy
    psi2 = q * q * xp * xp + yp * yp
    zero = psi2 == 0  # exact centre: double-where, alpha = 0 there
    psi = jnp.sqrt(jnp.where(zero, 1.0, psi2))
    scale = theta_E * jnp.sqrt(q) / f
    ax = jnp.where(zero, 0.0, scale * jnp.arctan(f * xp / psi))
    ay = jnp.where(zero, 0.0, scale * jnp.arctanh(f * yp / psi))
    return cos * ax - sin * ay, sin * ax + cos * ay


@jax.jit
def deflection_sie(
    x: Coordinates, y: Coordinates, theta_E: ScalarLike, e1: ScalarLike, e2: ScalarLike,
    center_x: ScalarLike = 0.0, center_y: ScalarLike = 0.0,
) -> _Pair:
    r"""Singular isothermal ellipsoid deflection [arcsec] (lenstronomy ``SIE`` conventions).

    .. math::
        \alpha_x + i\alpha_y = b_e\, \hat w\; \frac{\arctan\sqrt{\bar\epsilon \hat w^2}}
        {\sqrt{\bar\epsilon \hat w^2}}, \qquad b_e = \theta_E \sqrt{1 - e_1^2 - e_2^2},

    with ``w = z - (e1 + i e2) conj(z)``: Kormann et al. (1994) / Keeton (2001)
    ``alpha'_x = b/f arctan(f x'/psi)``, ``alpha'_y = b/f artanh(f y'/psi)``
    (``b = theta_E sqrt(q)``, ``f = sqrt(1 - q^2)``, ``psi = sqrt(q^2 x'^2 + y'^2)``) rewritten
    without the rotation angle (the T&M series with t = 1, module docstring).

    Evaluation: for ``|e| >= 1e-3`` the (cheaper) real Keeton form; for ``|e| < 1e-3``, where
    it is ``0/0``-prone and not differentiable at ``e = 0``, the complex form with the Taylor
    series of ``arctan(sqrt(zeta))/sqrt(zeta)`` (exact to rounding there).  The branch is
    chosen per lens with ``lax.cond`` (scalar parameters) or ``where`` (array parameters),
    each branch fed safe dummy ellipticities so no NaN leaks into gradients.  lenstronomy's
    ``SIE`` is an NIE with a 1e-10 arcsec core, which differs by ~5e-9 arcsec near the centre.

    Parameters
    ----------
    x, y
        Image-plane positions [arcsec], any broadcastable shapes.
    theta_E
        Einstein radius [arcsec] (lenstronomy's intermediate-axis convention).
    e1, e2
        Ellipticity components, ``e1^2 + e2^2 < 1``.
    center_x, center_y
        Lens centre [arcsec].

    Returns
    -------
    alpha_x, alpha_y
        Reduced deflection [arcsec], shape of ``x, y`` broadcast together.
    """
    x, y = _as_coordinates(x, y)
    dx, dy = x - center_x, y - center_y
    e1 = jnp.asarray(e1)
    e2 = jnp.asarray(e2)
    round_ = e1 * e1 + e2 * e2 < _SERIES_SWITCH**2
    # double-where: each branch only ever sees ellipticities in its own domain
    e1_round, e2_round = jnp.where(round_, e1, 0.0), jnp.where(round_, e2, 0.0)
    e1_ell, e2_ell = jnp.where(round_, 0.1, e1), jnp.where(round_, 0.0, e2)
    theta_E = jnp.asarray(theta_E)
    if round_.ndim == 0:
        return jax.lax.cond(
            round_,
            lambda: _sie_alpha_round(dx, dy, theta_E, e1_round, e2_round),
            lambda: _sie_alpha_keeton(dx, dy, theta_E, e1_ell, e2_ell),
        )
    ax_r, ay_r = _sie_alpha_round(dx, dy, theta_E, e1_round, e2_round)
    ax_e, ay_e = _sie_alpha_keeton(dx, dy, theta_E, e1_ell, e2_ell)
    return jnp.where(round_, ax_r, ax_e), jnp.where(round_, ay_r, ay_e)


@jax.jit
def potential_sie(x, y, theta_E, e1, e2, center_x=0.0, center_y=0.0) -> Float[Array, "..."]:
    r"""SIE potential ``psi = x alpha_x + y alpha_y`` [arcsec^2] (degree-1 homogeneity,
    Tessore & Metcalf 2015 eq. 15 with t = 1), relative to the centre."""
    z = _complex_offset(x, y, center_x, center_y)
    ax, ay = deflection_sie(x, y, theta_E, e1, e2, center_x, center_y)
    return z.real * ax + z.imag * ay


@jax.jit
def convergence_sie(x, y, theta_E, e1, e2, center_x=0.0, center_y=0.0) -> Float[Array, "..."]:
    r"""SIE convergence ``kappa = theta_E / (2 sqrt(q x'^2 + y'^2/q)) = b_e / (2 |w|)``."""
    _, modulus_w, _, zero, b_e = _sie_parts(x, y, theta_E, e1, e2, center_x, center_y)
    return b_e / (2 * _floored(modulus_w, zero))


@jax.jit
def hessian_sie(x, y, theta_E, e1, e2, center_x=0.0, center_y=0.0) -> _Quad:
    r"""SIE Hessian ``(f_xx, f_xy, f_yx, f_yy)``: ``kappa`` and ``gamma = -kappa z / z*``
    (Tessore & Metcalf 2015, eq. 17 with t = 1)."""
    z, modulus_w, _, zero_w, b_e = _sie_parts(x, y, theta_E, e1, e2, center_x, center_y)
    kappa = b_e / (2 * _floored(modulus_w, zero_w))
    _, unit_z, _ = _safe_modulus(z)
    return _hessian_from_kappa_gamma(kappa, -kappa * unit_z**2)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class SIS(AbstractLens):
    """Singular isothermal sphere, ``kappa = theta_E / (2 r)`` (lenstronomy ``SIS``).

    Parameters
    ----------
    theta_E
        Einstein radius [arcsec], >= 0.
    center_x, center_y
        Centre [arcsec].
    """

    theta_E: Float[Array, "..."] = eqx.field(converter=_param)
    center_x: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    center_y: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)

    def __check_init__(self):
        _check_nonnegative("SIS", "theta_E", self.theta_E)

    def deflection(self, x, y):
        return deflection_sis(x, y, self.theta_E, self.center_x, self.center_y)

    def potential(self, x, y):
        return potential_sis(x, y, self.theta_E, self.center_x, self.center_y)

    def convergence(self, x, y):
        return convergence_sis(x, y, self.theta_E, self.center_x, self.center_y)

    def hessian(self, x, y):
        return hessian_sis(x, y, self.theta_E, self.center_x, self.center_y)


class SIE(AbstractLens):
    """Singular isothermal ellipsoid (lenstronomy ``SIE``, without its 1e-10 core).

    ``kappa = theta_E / (2 sqrt(q x'^2 + y'^2 / q))`` in the major-axis frame.

    Parameters
    ----------
    theta_E
        Einstein radius [arcsec] (intermediate-axis convention), >= 0.
    e1, e2
        Ellipticity components, ``e1 + i e2 = (1-q)/(1+q) exp(2 i phi)``, ``e1^2 + e2^2 < 1``.
    center_x, center_y
        Centre [arcsec].
    """

    theta_E: Float[Array, "..."] = eqx.field(converter=_param)
    e1: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    e2: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    center_x: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    center_y: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)

    def __check_init__(self):
        _check_nonnegative("SIE", "theta_E", self.theta_E)
        _check_ellipticity("SIE", self.e1, self.e2)

    @property
    def _params(self):
        return self.theta_E, self.e1, self.e2, self.center_x, self.center_y

    def deflection(self, x, y):
        return deflection_sie(x, y, *self._params)

    def potential(self, x, y):
        return potential_sie(x, y, *self._params)

    def convergence(self, x, y):
        return convergence_sie(x, y, *self._params)

    def hessian(self, x, y):
        return hessian_sie(x, y, *self._params)
