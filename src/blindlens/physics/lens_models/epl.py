"""The elliptical power law (:class:`EPL`, lenstronomy ``EPL``; Tessore & Metcalf 2015).

Pure functions ``deflection_epl``, ``potential_epl``, ``convergence_epl``, ``hessian_epl``, the
hypergeometric series ``2F1(1, t/2; 2 - t/2; zeta)`` with its custom JVP, and the Equinox
Module.  The complex formulation is described in :mod:`blindlens.lens_models`.

References
----------
Tessore N., Metcalf R. B., 2015, A&A 580, A79 (arXiv:1507.01819), "The elliptical power law
profile lens" (EPL deflection: eqs. 13, 15, 22, 23; shear: eq. 17 of the corrigendum).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._types import Array, Coordinates, Float, ScalarLike
from ._helpers import (
    _check_ellipticity,
    _check_nonnegative,
    _floored,
    _hessian_from_kappa_gamma,
    _is_concrete,
    _Pair,
    _Quad,
    _safe_modulus,
    _split,
)
from .base import AbstractLens, _param
from .isothermal import _sie_parts

# Default number of terms of the EPL hypergeometric series; truncation error is bounded by
# |e|^N / (1 - |e|) relative, i.e. 1e-19 at |e| = 0.5 and 4e-10 at |e| = 0.7.
_EPL_DEFAULT_TERMS = 64


# --------------------------------------------------------------------------------------------
# hypergeometric series
# --------------------------------------------------------------------------------------------


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
# Module
# --------------------------------------------------------------------------------------------


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
