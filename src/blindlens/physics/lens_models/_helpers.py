"""Numerical helpers shared by the mass profiles of :mod:`blindlens.lens_models`.

Coordinate broadcasting, the complex offset ``z = (x - center_x) + i (y - center_y)``, the
NaN-free modulus (the "double-where" trick, :func:`_safe_modulus`), the centre floor for
divergent quantities, the Hessian from convergence and shear, and parameter validation.
Private to the package; the conventions are described in :mod:`blindlens.lens_models`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..._types import Array, Float

_Pair = tuple[Float[Array, "..."], Float[Array, "..."]]
_Quad = tuple[Float[Array, "..."], Float[Array, "..."], Float[Array, "..."], Float[Array, "..."]]

# Radius (arcsec) at which convergence and Hessian are evaluated at the exact profile centre,
# where they diverge; the value there is finite but has no physical meaning.
_CENTRE_FLOOR = 1e-8


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
