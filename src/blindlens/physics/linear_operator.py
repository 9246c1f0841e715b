"""The linear-operator interface that likelihood scores and samplers are written against.

A fixed lens makes the forward model linear in the source, ``y = A s``. Everything that only
needs ``A`` (likelihood scores, the source-posterior sampler, the Gaussian gold standard) is
written against :class:`AbstractLinearOperator`, so it works equally with the lensing operator
and with a dense matrix in tests.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._types import Array, Float

__all__ = [
    "AbstractLinearOperator",
    "DenseOperator",
    "conjugate_gradient",
    "power_iteration",
    "chebyshev_coefficients",
    "chebyshev_apply",
]


class AbstractLinearOperator(eqx.Module):
    """A linear map from source arrays ``(sy, sx)`` to image arrays ``(ny, nx)``.

    Subclasses implement :meth:`__call__` (``A s``), and may override :meth:`adjoint`
    (``A^T y``, default: exact transpose by ``jax.linear_transpose``) and :meth:`diag_aat`
    (``diag(A A^T)``, needed by the CLA likelihood score).
    """

    @property
    @abc.abstractmethod
    def source_shape(self) -> tuple[int, int]:
        """Shape ``(sy, sx)`` of the source arrays the operator takes."""

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int]:
        """Shape ``(ny, nx)`` of the image arrays the operator returns."""

    @abc.abstractmethod
    def __call__(self, source: Float[Array, "sy sx"]) -> Float[Array, "ny nx"]:
        """Apply the operator: ``A s``."""

    def adjoint(self, image: Float[Array, "ny nx"]) -> Float[Array, "sy sx"]:
        """Apply the exact transpose: ``A^T y``."""
        primal = jnp.zeros(self.source_shape, image.dtype)
        (out,) = jax.linear_transpose(self.__call__, primal)(image)
        return out

    def diag_aat(self) -> Float[Array, "ny nx"]:
        """The diagonal of ``A A^T`` (one entry per image pixel).

        The default builds it row by row from the adjoint, which is exact but costs one
        adjoint per image pixel: concrete operators override it with a closed form.
        """
        n = self.image_shape[0] * self.image_shape[1]

        def row_norm(k):
            e = jnp.zeros(n).at[k].set(1.0).reshape(self.image_shape)
            r = self.adjoint(e)
            return jnp.sum(r * r)

        return jax.lax.map(row_norm, jnp.arange(n)).reshape(self.image_shape)


class DenseOperator(AbstractLinearOperator):
    """A linear operator stored as a dense matrix ``(ny*nx, sy*sx)``; for tests and small problems."""

    matrix: Float[Array, "m n"]
    _source_shape: tuple[int, int] = eqx.field(static=True)
    _image_shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, matrix, source_shape: tuple[int, int], image_shape: tuple[int, int]):
        matrix = jnp.asarray(matrix)
        if matrix.shape != (image_shape[0] * image_shape[1], source_shape[0] * source_shape[1]):
            raise ValueError(
                f"DenseOperator matrix has shape {matrix.shape}, expected "
                f"({image_shape[0] * image_shape[1]}, {source_shape[0] * source_shape[1]}) "
                f"for image {image_shape} and source {source_shape}."
            )
        self.matrix = matrix
        self._source_shape = tuple(source_shape)
        self._image_shape = tuple(image_shape)

    @property
    def source_shape(self) -> tuple[int, int]:
        return self._source_shape

    @property
    def image_shape(self) -> tuple[int, int]:
        return self._image_shape

    def __call__(self, source):
        return (self.matrix @ source.reshape(-1)).reshape(self._image_shape)

    def adjoint(self, image):
        return (self.matrix.T @ image.reshape(-1)).reshape(self._source_shape)

    def diag_aat(self):
        return jnp.sum(self.matrix**2, axis=1).reshape(self._image_shape)


def conjugate_gradient(matvec, b, tol: float, maxiter: int, x0=None, preconditioner=None):
    """Solve ``M u = b`` for a symmetric positive-definite ``M`` by (preconditioned) conjugate gradients.

    Hestenes & Stiefel (1952), J. Res. NBS 49, 409; with ``preconditioner`` the preconditioned form
    (Golub & Van Loan 2013, Matrix Computations, alg. 11.5.1). Stops when ``||r|| <= tol ||b||``
    (the unpreconditioned residual), after ``maxiter`` iterations, or if a non-positive curvature
    ``p^T M p <= 0`` appears (a network Jacobian need not be exactly positive definite).

    Parameters
    ----------
    preconditioner
        ``None`` (plain CG), or an array of ``b``'s shape holding a positive diagonal ``P^{-1}``
        (applied elementwise), or a callable applying a symmetric positive-definite ``P^{-1}``.
        It changes how fast the iterates converge, never the solution they converge to.

    Returns
    -------
    (u, iterations)
    """
    if preconditioner is None:
        def apply_p(r):
            return r
    elif callable(preconditioner):
        apply_p = preconditioner
    else:
        inv_diag = preconditioner

        def apply_p(r):
            return inv_diag * r
    u = jnp.zeros_like(b) if x0 is None else x0
    r = b - matvec(u) if x0 is not None else b
    z = apply_p(r)
    p = z
    rz = jnp.vdot(r, z)
    target = (tol**2) * jnp.vdot(b, b)

    def cond(state):
        _, r, _, _, k, ok = state
        return (jnp.vdot(r, r) > target) & (k < maxiter) & ok

    def body(state):
        u, r, p, rz, k, _ = state
        mp = matvec(p)
        curv = jnp.vdot(p, mp)
        ok = curv > 0
        alpha = jnp.where(ok, rz / jnp.where(ok, curv, 1.0), 0.0)
        u = u + alpha * p
        r = r - alpha * mp
        z = apply_p(r)
        rz_new = jnp.vdot(r, z)
        p = z + (rz_new / jnp.where(rz > 0, rz, 1.0)) * p
        return u, r, p, rz_new, k + 1, ok

    u, _, _, _, k, _ = jax.lax.while_loop(cond, body, (u, r, p, rz, jnp.asarray(0), jnp.asarray(True)))
    return u, k


def power_iteration(matvec, x0, num_iterations: int) -> Float[Array, ""]:
    """Largest eigenvalue of a symmetric positive semi-definite ``M`` by the power method.

    Returns the Rayleigh quotient ``v^T M v / v^T v`` of ``M^k x0`` (``k = num_iterations``), a
    lower bound on ``lambda_max`` that converges geometrically at rate ``lambda_2 / lambda_1``
    (Golub & Van Loan 2013, Matrix Computations, sec. 8.2.1). Callers that need an upper bound
    add a margin.
    """
    if int(num_iterations) < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}.")

    def body(_, v):
        w = matvec(v)
        return w / jnp.maximum(jnp.sqrt(jnp.vdot(w, w)), jnp.finfo(w.dtype).tiny)

    v = x0 / jnp.sqrt(jnp.vdot(x0, x0))
    v = jax.lax.fori_loop(0, int(num_iterations), body, v)
    return jnp.vdot(v, matvec(v)) / jnp.vdot(v, v)


def chebyshev_coefficients(fn, lower: float, upper: float, degree: int):
    """Chebyshev interpolation coefficients ``c_0..c_degree`` of a scalar ``fn`` on ``[lower, upper]``.

    Interpolation at the ``degree + 1`` Chebyshev points of the first kind (Trefethen 2013,
    Approximation Theory and Approximation Practice, ch. 3-4); ``fn`` is called on a numpy array
    once, so the coefficients are static constants of a compiled program.
    """
    if not upper > lower:
        raise ValueError(f"need upper > lower, got [{lower}, {upper}].")
    n = int(degree) + 1
    theta = np.pi * (np.arange(n) + 0.5) / n
    nodes = 0.5 * (upper + lower) + 0.5 * (upper - lower) * np.cos(theta)
    values = np.asarray(fn(nodes), dtype=np.float64)
    coeffs = np.array([2.0 / n * np.sum(values * np.cos(k * theta)) for k in range(n)])
    coeffs[0] *= 0.5
    return tuple(float(c) for c in coeffs)


def chebyshev_apply(matvec, v, coeffs, lower: float, upper: float):
    """``p(M) v`` for the Chebyshev series ``p = sum_k c_k T_k`` on ``[lower, upper]``.

    ``M`` is symmetric with its spectrum inside ``[lower, upper]``; the three-term recurrence
    ``T_{k+1}(S) v = 2 S T_k(S) v - T_{k-1}(S) v`` with ``S = (2 M - (upper + lower)) / (upper - lower)``
    costs ``len(coeffs) - 1`` products with ``M`` and no factorisation. With ``coeffs`` from
    :func:`chebyshev_coefficients` this evaluates ``f(M) v`` (e.g. a matrix square root applied to
    a vector, Higham 2008, Functions of Matrices, sec. 4.4), to the accuracy of the interpolant.
    """
    half_width = 0.5 * (upper - lower)
    centre = 0.5 * (upper + lower)

    def scaled(u):
        return (matvec(u) - centre * u) / half_width

    t_prev, t_curr = v, scaled(v)
    out = coeffs[0] * t_prev + coeffs[1] * t_curr if len(coeffs) > 1 else coeffs[0] * v
    if len(coeffs) <= 2:
        return out
    stacked = jnp.asarray(coeffs[2:], dtype=v.dtype)

    def body(carry, c):
        t_prev, t_curr, out = carry
        t_next = 2.0 * scaled(t_curr) - t_prev
        return (t_curr, t_next, out + c * t_next), None

    (_, _, out), _ = jax.lax.scan(body, (t_prev, t_curr, out), stacked)
    return out
