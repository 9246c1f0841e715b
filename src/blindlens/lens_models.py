r"""Thin-lens mass profiles in lenstronomy's conventions, as pure functions and Equinox Modules.

Every profile exists twice (the other pure functions of a profile take the parameters
documented on its ``deflection_<name>``; potentials in arcsec^2, convergence dimensionless):

* pure functions ``deflection_<name>(x, y, *params)``, ``potential_<name>``,
  ``convergence_<name>``, ``hessian_<name>`` (elementwise over arrays of any shape), and
* an :class:`AbstractLens` subclass whose fields are the physical parameters under
  lenstronomy's keyword names (``SIE(theta_E, e1, e2, center_x, center_y)``, ...), with
  ``deflection``, ``potential``, ``convergence``, ``hessian``, ``magnification`` and
  ``ray_shoot``. Lenses add: ``SIE(...) + ExternalShear(...)`` is a :class:`CompositeLens`.

Conventions (lenstronomy 1.14, verified against it in ``tests/test_lens_models.py``):
angles in arcsec, position angles counter-clockwise from +x, deflections are *reduced*
(scaled by ``D_ls / D_s``), the lens equation is ``beta = theta - alpha(theta)``.
Ellipticity ``e1 + i e2 = (1 - q)/(1 + q) exp(2 i phi)`` with ``q`` the minor/major axis ratio;
the Einstein radius is lenstronomy's intermediate-axis ("circularised") one.

Numerics: an ellipticity-free complex formulation
--------------------------------------------------
The textbook SIE/EPL formulas rotate into the major-axis frame with
``phi = atan2(e2, e1)/2`` and use ``q = (1-|e|)/(1+|e|)``; both are non-differentiable at
``e = 0`` (``jax.grad`` returns NaN there) and the SIE closed form has a ``0/0`` at ``q = 1``.
We instead write the Tessore & Metcalf (2015) solution directly in the sky frame.  With
``z = (x - center_x) + i (y - center_y)`` and ``epsilon = e1 + i e2``, the major-axis elliptical
coordinate ``Z = q x' + i y'`` of T&M satisfies

.. math::  w \equiv z - \epsilon \bar z = (1 + |e|)\, e^{i\phi} Z ,

so ``|w| = (1+|e|) R`` and the elliptical angle is ``exp(i theta) = exp(-i phi) w/|w|``.
Substituting into T&M eqs. (13), (22) and ``b = theta_E sqrt(q)`` (lenstronomy's EPL) gives

.. math::
    \kappa = \frac{2-t}{2} \left(\frac{b_e}{|w|}\right)^{t}, \qquad
    \alpha_x + i\alpha_y = b_e \left(\frac{b_e}{|w|}\right)^{t-1} \hat w\;
        {}_2F_1\!\left(1, \tfrac{t}{2}; 2 - \tfrac{t}{2}; -\bar\epsilon\, \hat w^2\right),

with ``t = gamma - 1``, ``hat w = w/|w|`` and ``b_e = theta_E sqrt(1 - e1^2 - e2^2)``
(because ``q (1+|e|)^2 = 1 - |e|^2``).  Every quantity is a polynomial or an analytic function
of ``(e1, e2)``: no ``atan2``, no ``|e|``, so values *and* gradients are smooth through
``e = 0``.  The only remaining singular point is the exact centre ``z = 0``, handled with the
"double-where" trick (compute on a safe dummy value, then select), see :func:`_safe_modulus`.
For speed the SIE uses Keeton's real closed form when ``|e| >= 1e-3`` and this complex form
(with a Taylor series) only below, see :func:`deflection_sie`.

The public pure functions are wrapped in ``jax.jit`` (``m`` and ``n_terms`` static), so eager
calls (plots, notebooks) hit XLA's cache instead of re-tracing ``lax.cond``/``lax.scan`` on
every call; inside a user's ``jit`` they are inlined.

At the exact centre the profiles return their symmetric limit for the deflection and the
potential (0, as lenstronomy does for SIS/SIE/EPL), and finite but meaningless values for the
convergence and Hessian (evaluated at radius ``1e-8`` arcsec with zero shear); gradients there
are finite.  lenstronomy's ``MULTIPOLE`` uses ``atan2(0, 0) = 0`` at its centre, and so do we.

References
----------
Tessore N., Metcalf R. B., 2015, A&A 580, A79 (arXiv:1507.01819), "The elliptical power law
profile lens" (EPL deflection: eqs. 13, 15, 22, 23; shear: eq. 17 of the corrigendum).
Kormann R., Schneider P., Bartelmann M., 1994, A&A 284, 285 (SIE closed form).
Keeton C. R., 2001, arXiv:astro-ph/0102341 (SIE/NIE formulas as used by lenstronomy).
Xu D. et al., 2013, MNRAS 435, 607, App. B3, eq. B12 (circular multipoles, lenstronomy
``MULTIPOLE``).
Schneider P., Ehlers J., Falco E. E., 1992, *Gravitational Lenses*, ch. 5 (potential,
convergence ``kappa = Laplacian(psi)/2``, shear, magnification ``1/det A``).
Birrer S. et al., 2021, JOSS 6, 3283 (lenstronomy II; parameter conventions).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._types import Array, Coordinates, Float, Image, ScalarLike
from .grid import PixelGrid

__all__ = [
    "AbstractLens",
    "CompositeLens",
    "SIS",
    "SIE",
    "EPL",
    "ExternalShear",
    "Multipole",
    "deflection_sis",
    "potential_sis",
    "convergence_sis",
    "hessian_sis",
    "deflection_sie",
    "potential_sie",
    "convergence_sie",
    "hessian_sie",
    "deflection_epl",
    "potential_epl",
    "convergence_epl",
    "hessian_epl",
    "deflection_shear",
    "potential_shear",
    "convergence_shear",
    "hessian_shear",
    "deflection_multipole",
    "potential_multipole",
    "convergence_multipole",
    "hessian_multipole",
    "inverse_magnification_map",
    "critical_curves_and_caustics",
]

_Pair = tuple[Float[Array, "..."], Float[Array, "..."]]
_Quad = tuple[Float[Array, "..."], Float[Array, "..."], Float[Array, "..."], Float[Array, "..."]]

# Radius (arcsec) at which convergence and Hessian are evaluated at the exact profile centre,
# where they diverge; the value there is finite but has no physical meaning.
_CENTRE_FLOOR = 1e-8
# |e| below which the SIE uses the Taylor series of arctan(sqrt(zeta))/sqrt(zeta), |zeta| = |e|
# (5 terms: truncation error < |e|^6/13 < 1e-19, far below float64 rounding).
_SERIES_SWITCH = 1e-3
# Default number of terms of the EPL hypergeometric series; truncation error is bounded by
# |e|^N / (1 - |e|) relative, i.e. 1e-19 at |e| = 0.5 and 4e-10 at |e| = 0.7.
_EPL_DEFAULT_TERMS = 64


# --------------------------------------------------------------------------------------------
# numerical helpers
# --------------------------------------------------------------------------------------------


def _as_coordinates(x, y) -> _Pair:
    """Broadcast ``x, y`` to a common floating shape and dtype."""
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    dtype = jnp.result_type(x, y, float)
    return tuple(jnp.broadcast_arrays(x.astype(dtype), y.astype(dtype)))


def _complex_offset(x, y, center_x, center_y):
    """``z = (x - center_x) + i (y - center_y)`` (complex), after coordinate checks."""
    x, y = _as_coordinates(x, y)
    return (x - center_x) + 1j * (y - center_y)


def _safe_modulus(z, unit_at_zero=0.0):
    """``(|z|, z/|z|, z == 0)`` without NaN values or NaN gradients at ``z = 0``.

    The "double-where" trick: ``sqrt`` and the division are evaluated on a dummy value (1)
    where ``z == 0``, so neither they nor their derivatives ever see a zero, and the result is
    then selected with ``where``.  A single ``where`` on the output would still propagate
    ``0 * inf = NaN`` through the unselected branch in reverse mode.  At ``z = 0`` the modulus
    returned is 1 (callers select it away) and the unit vector is ``unit_at_zero``.
    """
    abs2 = z.real * z.real + z.imag * z.imag
    zero = abs2 == 0
    modulus = jnp.sqrt(jnp.where(zero, 1.0, abs2))
    unit = jnp.where(zero, unit_at_zero, z / modulus)
    return modulus, unit, zero


def _floored(modulus, zero):
    """The modulus with the exact centre replaced by :data:`_CENTRE_FLOOR`."""
    return jnp.where(zero, _CENTRE_FLOOR, modulus)


def _hyp2f1_epl_series(zeta, t, n_terms, derivatives):
    r"""Horner evaluation of ``S = sum_n c_n zeta^n`` (and optionally ``dS/dzeta``, ``dS/dt``).

    ``c_0 = 1``, ``c_n = c_{n-1} A_n``, ``A_n = (2n - 2 + t) / (2n + 2 - t)``, hence
    ``dc_n/dt = c_n sum_{k<=n} [1/(2k - 2 + t) + 1/(2k + 2 - t)]``.
    """
    n = jnp.arange(1, n_terms, dtype=t.dtype).reshape((-1,) + (1,) * t.ndim)
    lo, hi = 2 * n - 2 + t, 2 * n + 2 - t
    head = jnp.ones((1,) + t.shape, t.dtype)
    coeffs = jnp.concatenate([head, jnp.cumprod(lo / hi, axis=0)])
    shape = jnp.broadcast_shapes(zeta.shape, t.shape)
    zero = jnp.zeros(shape, jnp.result_type(zeta, coeffs))
    if not derivatives:
        def step(acc, c):
            return c + zeta * acc, None

        acc, _ = jax.lax.scan(step, zero, coeffs[::-1], unroll=8)
        return acc, None, None
    dlog = jnp.concatenate([0 * head, jnp.cumsum(1 / lo + 1 / hi, axis=0)])
    dcoeffs = coeffs * dlog

    def step_d(carry, cs):
        acc, d_zeta, d_t = carry
        c, dc = cs
        return (c + zeta * acc, acc + zeta * d_zeta, dc + zeta * d_t), None

    (acc, d_zeta, d_t), _ = jax.lax.scan(
        step_d, (zero, zero, zero), (coeffs[::-1], dcoeffs[::-1]), unroll=8
    )
    return acc, d_zeta, d_t


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _hyp2f1_epl(zeta, t, n_terms):
    r"""``2F1(1, t/2; 2 - t/2; zeta)`` by its power series, for ``|zeta| < 1``.

    The coefficients obey ``c_0 = 1``, ``c_n = c_{n-1} (2n - 2 + t) / (2n + 2 - t)``
    (Tessore & Metcalf 2015, eq. 23, the recurrence written for the series in ``zeta``) and
    ``0 < c_n <= 1`` for ``0 < t < 2``, so the truncation error after ``n_terms`` terms is at
    most ``|zeta|^n_terms / (1 - |zeta|)``.  Evaluated by Horner's rule in a ``lax.scan``.
    A custom JVP supplies the analytic ``dS/dzeta`` (the function is holomorphic) and
    ``dS/dt`` from the same kind of Horner sums, so reverse mode does not store the scan.
    """
    return _hyp2f1_epl_series(zeta, t, n_terms, derivatives=False)[0]


@_hyp2f1_epl.defjvp
def _hyp2f1_epl_jvp(n_terms, primals, tangents):
    zeta, t = primals
    d_zeta, d_t = tangents
    value, s_zeta, s_t = _hyp2f1_epl_series(zeta, t, n_terms, derivatives=True)
    return value, s_zeta * d_zeta + s_t * d_t


def _hessian_from_kappa_gamma(kappa, gamma) -> _Quad:
    """``(f_xx, f_xy, f_yx, f_yy)`` from convergence and complex shear ``gamma1 + i gamma2``."""
    g1, g2 = gamma.real, gamma.imag
    return kappa + g1, g2, g2, kappa - g1


def _split(alpha) -> _Pair:
    return alpha.real, alpha.imag


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _check_ellipticity(name, e1, e2):
    if _is_concrete(e1) and _is_concrete(e2):
        e_abs = np.sqrt(np.asarray(e1, float) ** 2 + np.asarray(e2, float) ** 2)
        if not np.all(e_abs < 1):
            raise ValueError(
                f"{name}: ellipticity |e| = sqrt(e1^2 + e2^2) must be < 1 (axis ratio q > 0), "
                f"got |e| = {e_abs}; pass e1, e2 with e1^2 + e2^2 < 1."
            )


def _check_nonnegative(name, pname, value, strict=False):
    if _is_concrete(value):
        v = np.asarray(value, float)
        ok = np.all(v > 0) if strict else np.all(v >= 0)
        if not ok:
            bound = "> 0" if strict else ">= 0"
            raise ValueError(f"{name}: {pname} must be {bound} (arcsec), got {value}.")


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
# EPL
# --------------------------------------------------------------------------------------------


def _epl_alpha(x, y, theta_E, gamma, e1, e2, center_x, center_y, n_terms):
    z, modulus_w, unit_w, zero, b_e = _sie_parts(x, y, theta_E, e1, e2, center_x, center_y)
    t = gamma - 1
    ratio = b_e / modulus_w  # modulus_w is 1 at the centre, where unit_w = 0 zeroes alpha
    zeta = -(e1 - 1j * e2) * unit_w**2
    alpha = b_e * ratio ** (t - 1) * unit_w * _hyp2f1_epl(zeta, jnp.asarray(t), n_terms)
    return z, alpha, modulus_w, zero, b_e, t


@functools.partial(jax.jit, static_argnames=("n_terms",))
def deflection_epl(
    x: Coordinates, y: Coordinates, theta_E: ScalarLike, gamma: ScalarLike, e1: ScalarLike,
    e2: ScalarLike, center_x: ScalarLike = 0.0, center_y: ScalarLike = 0.0,
    n_terms: int = _EPL_DEFAULT_TERMS,
) -> _Pair:
    r"""Elliptical power-law deflection [arcsec] (lenstronomy ``EPL``; Tessore & Metcalf 2015).

    .. math::
        \alpha_x + i\alpha_y = b_e \left(\frac{b_e}{|w|}\right)^{t-1} \hat w\;
        {}_2F_1\!\left(1, \tfrac t2; 2 - \tfrac t2; -\bar\epsilon \hat w^2\right),

    ``t = gamma - 1`` (``gamma = 2`` is the SIE), ``w = z - (e1 + i e2) conj(z)``,
    ``b_e = theta_E sqrt(1 - e1^2 - e2^2)``.  T&M eq. 22 with the rotation absorbed (module
    docstring); the hypergeometric function is summed as a power series with ``n_terms``
    terms (relative truncation error <= ``|e|^n_terms / (1 - |e|)``).

    Parameters
    ----------
    x, y
        Image-plane positions [arcsec], any broadcastable shapes.
    theta_E
        Einstein radius [arcsec] (lenstronomy's intermediate-axis convention).
    gamma
        3-D logarithmic density slope, ``1 < gamma < 3`` (2 = isothermal).
    e1, e2
        Ellipticity components, ``e1^2 + e2^2 < 1``.
    center_x, center_y
        Lens centre [arcsec].
    n_terms
        Static number of series terms.

    Returns
    -------
    alpha_x, alpha_y
        Reduced deflection [arcsec], shape of ``x, y`` broadcast together.
    """
    _, alpha, *_ = _epl_alpha(x, y, theta_E, gamma, e1, e2, center_x, center_y, n_terms)
    return _split(alpha)


@functools.partial(jax.jit, static_argnames=("n_terms",))
def potential_epl(
    x, y, theta_E, gamma, e1, e2, center_x=0.0, center_y=0.0, n_terms=_EPL_DEFAULT_TERMS
) -> Float[Array, "..."]:
    r"""EPL potential ``psi = (x alpha_x + y alpha_y) / (2 - t)`` [arcsec^2] (T&M eq. 15)."""
    z, alpha, *_ , t = _epl_alpha(x, y, theta_E, gamma, e1, e2, center_x, center_y, n_terms)
    return (z.real * alpha.real + z.imag * alpha.imag) / (2 - t)


@jax.jit
def convergence_epl(
    x, y, theta_E, gamma, e1, e2, center_x=0.0, center_y=0.0
) -> Float[Array, "..."]:
    r"""EPL convergence ``kappa = (3 - gamma)/2 (theta_E / sqrt(q x'^2 + y'^2/q))^(gamma-1)``
    ``= (2 - t)/2 (b_e/|w|)^t`` (lenstronomy ``EPL`` docstring; T&M eq. 2)."""
    _, modulus_w, _, zero, b_e = _sie_parts(x, y, theta_E, e1, e2, center_x, center_y)
    t = gamma - 1
    return (2 - t) / 2 * (b_e / _floored(modulus_w, zero)) ** t


@functools.partial(jax.jit, static_argnames=("n_terms",))
def hessian_epl(
    x, y, theta_E, gamma, e1, e2, center_x=0.0, center_y=0.0, n_terms=_EPL_DEFAULT_TERMS
) -> _Quad:
    r"""EPL Hessian from ``kappa`` and the shear ``gamma1 + i gamma2 = ((1-t) alpha - kappa z)/z*``.

    Tessore & Metcalf (2015), eq. 17 (corrigendum); it follows from Euler's theorem for the
    degree ``(1 - t)`` homogeneous deflection, ``z d_z alpha + z* d_z* alpha = (1 - t) alpha``.
    """
    z, alpha, modulus_w, zero_w, b_e, t = _epl_alpha(
        x, y, theta_E, gamma, e1, e2, center_x, center_y, n_terms
    )
    kappa = (2 - t) / 2 * (b_e / _floored(modulus_w, zero_w)) ** t
    modulus_z, unit_z, _ = _safe_modulus(z)
    shear = (1 - t) * alpha * unit_z / modulus_z - kappa * unit_z**2
    return _hessian_from_kappa_gamma(kappa, shear)


# --------------------------------------------------------------------------------------------
# external shear
# --------------------------------------------------------------------------------------------


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
# circular multipole
# --------------------------------------------------------------------------------------------


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
# Modules
# --------------------------------------------------------------------------------------------


def _param(value):
    """Field converter: parameters are stored as JAX arrays so ``eqx.filter_grad`` sees them."""
    return jnp.asarray(value)


class AbstractLens(eqx.Module):
    """A thin lens: deflection and potential, plus everything derived from them.

    Subclasses implement :meth:`deflection` and :meth:`potential`; :meth:`hessian` defaults to
    forward-mode autodiff of the deflection (closed forms override it) and :meth:`convergence`
    to half its trace.  All methods are elementwise over ``x, y`` of any (broadcastable) shape,
    in arcsec.  ``lens_a + lens_b`` is a :class:`CompositeLens`.
    """

    @abc.abstractmethod
    def deflection(self, x: Coordinates, y: Coordinates) -> _Pair:
        """Reduced deflection ``(alpha_x, alpha_y)`` [arcsec] = gradient of the potential."""

    @abc.abstractmethod
    def potential(self, x: Coordinates, y: Coordinates) -> Float[Array, "..."]:
        """Lensing potential ``psi`` [arcsec^2] (defined up to an additive constant)."""

    def hessian(self, x: Coordinates, y: Coordinates) -> _Quad:
        """``(f_xx, f_xy, f_yx, f_yy)`` with ``f_xy = d alpha_x / d y``, ``f_yx = d alpha_y / d x``.

        Generic version: two forward-mode JVPs of :meth:`deflection` with unit tangents, exact
        because the deflection is elementwise in the positions.
        """
        x, y = _as_coordinates(x, y)
        ones = jnp.ones_like(x)
        _, (f_xx, f_yx) = jax.jvp(lambda u: self.deflection(u, y), (x,), (ones,))
        _, (f_xy, f_yy) = jax.jvp(lambda v: self.deflection(x, v), (y,), (ones,))
        return f_xx, f_xy, f_yx, f_yy

    def convergence(self, x: Coordinates, y: Coordinates) -> Float[Array, "..."]:
        """Convergence ``kappa = (f_xx + f_yy)/2`` (dimensionless)."""
        f_xx, _, _, f_yy = self.hessian(x, y)
        return 0.5 * (f_xx + f_yy)

    def inverse_magnification(self, x: Coordinates, y: Coordinates) -> Float[Array, "..."]:
        """``det A = (1 - f_xx)(1 - f_yy) - f_xy f_yx``; zero on the critical curves."""
        f_xx, f_xy, f_yx, f_yy = self.hessian(x, y)
        return (1 - f_xx) * (1 - f_yy) - f_xy * f_yx

    def magnification(self, x: Coordinates, y: Coordinates) -> Float[Array, "..."]:
        """Signed magnification ``mu = 1 / det A`` (Schneider et al. 1992, eq. 5.23);
        infinite on critical curves."""
        return 1 / self.inverse_magnification(x, y)

    def ray_shoot(self, x: Coordinates, y: Coordinates) -> _Pair:
        """Source-plane position ``beta = theta - alpha(theta)`` [arcsec] (lens equation)."""
        x, y = _as_coordinates(x, y)
        alpha_x, alpha_y = self.deflection(x, y)
        return x - alpha_x, y - alpha_y

    def __add__(self, other):
        if not isinstance(other, AbstractLens):
            return NotImplemented
        return CompositeLens((self, other))

    def __radd__(self, other):
        # lets ``sum(lenses)`` work (it starts from the integer 0)
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented


class CompositeLens(AbstractLens):
    """Sum of lenses in one plane: deflections, potentials and Hessians add.

    Nested composites are flattened, so ``(a + b) + c`` has ``components == (a, b, c)``.
    """

    components: tuple[AbstractLens, ...]

    def __init__(self, components: Iterable[AbstractLens]):
        flat = []
        for comp in components:
            if isinstance(comp, CompositeLens):
                flat.extend(comp.components)
            elif isinstance(comp, AbstractLens):
                flat.append(comp)
            else:
                raise ValueError(
                    f"CompositeLens components must be AbstractLens instances, got {type(comp)!r}; "
                    "build lenses from blindlens.lens_models classes."
                )
        if not flat:
            raise ValueError("CompositeLens needs at least one component.")
        self.components = tuple(flat)

    def deflection(self, x, y):
        x, y = _as_coordinates(x, y)
        ax, ay = jnp.zeros_like(x), jnp.zeros_like(y)
        for comp in self.components:
            dx, dy = comp.deflection(x, y)
            ax, ay = ax + dx, ay + dy
        return ax, ay

    def potential(self, x, y):
        return sum(comp.potential(x, y) for comp in self.components)

    def hessian(self, x, y):
        parts = [comp.hessian(x, y) for comp in self.components]
        return tuple(sum(p[i] for p in parts) for i in range(4))

    def convergence(self, x, y):
        return sum(comp.convergence(x, y) for comp in self.components)


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


class EPL(AbstractLens):
    """Elliptical power law (lenstronomy ``EPL``; Tessore & Metcalf 2015).

    ``kappa = (3 - gamma)/2 (theta_E / sqrt(q x'^2 + y'^2/q))^(gamma - 1)``; ``gamma = 2`` is
    the :class:`SIE`.

    Parameters
    ----------
    theta_E
        Einstein radius [arcsec], > 0.
    gamma
        Logarithmic slope of the 3-D density, ``1 < gamma < 3``.
    e1, e2
        Ellipticity components as for :class:`SIE`.
    center_x, center_y
        Centre [arcsec].
    n_terms
        Static: number of terms of the hypergeometric series (relative truncation error
        ``<= |e|^n_terms / (1 - |e|)``); the default 64 is exact to float64 for ``|e| <= 0.55``.
    """

    theta_E: Float[Array, "..."] = eqx.field(converter=_param)
    gamma: Float[Array, "..."] = eqx.field(converter=_param, default=2.0)
    e1: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    e2: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    center_x: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    center_y: Float[Array, "..."] = eqx.field(converter=_param, default=0.0)
    n_terms: int = eqx.field(static=True, default=_EPL_DEFAULT_TERMS)

    def __check_init__(self):
        _check_nonnegative("EPL", "theta_E", self.theta_E, strict=True)
        _check_ellipticity("EPL", self.e1, self.e2)
        if _is_concrete(self.gamma):
            g = np.asarray(self.gamma, float)
            if not np.all((g > 1) & (g < 3)):
                raise ValueError(
                    f"EPL: power-law slope gamma must satisfy 1 < gamma < 3 (2 = isothermal), "
                    f"got {self.gamma}."
                )
        if int(self.n_terms) != self.n_terms or self.n_terms < 1:
            raise ValueError(f"EPL: n_terms must be a positive integer, got {self.n_terms!r}.")

    @property
    def _params(self):
        return self.theta_E, self.gamma, self.e1, self.e2, self.center_x, self.center_y

    def deflection(self, x, y):
        return deflection_epl(x, y, *self._params, n_terms=self.n_terms)

    def potential(self, x, y):
        return potential_epl(x, y, *self._params, n_terms=self.n_terms)

    def convergence(self, x, y):
        return convergence_epl(x, y, *self._params)

    def hessian(self, x, y):
        return hessian_epl(x, y, *self._params, n_terms=self.n_terms)


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


# --------------------------------------------------------------------------------------------
# plotting helpers
# --------------------------------------------------------------------------------------------


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
