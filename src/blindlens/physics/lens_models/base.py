"""The lens interface of :mod:`blindlens.lens_models`: :class:`AbstractLens` and :class:`CompositeLens`.

:class:`AbstractLens` derives the Hessian, convergence, magnification and the lens equation
from a profile's deflection and potential; ``lens_a + lens_b`` is a :class:`CompositeLens`,
which lives here because :meth:`AbstractLens.__add__` builds it.  :func:`_param` is the field
converter every concrete profile uses.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._types import Array, Coordinates, Float
from ._helpers import _as_coordinates, _Pair, _Quad


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
