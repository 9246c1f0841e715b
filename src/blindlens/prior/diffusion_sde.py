"""The variance-exploding (VE) diffusion process and its reverse-time integration with diffrax.

Forward process (Song et al. 2021, "Score-Based Generative Modeling through SDEs", ICLR):

    dx = g(t) dW,    sigma(t) = sigma_min (sigma_max / sigma_min)^t,
    g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min)),    t in [0, 1],

with perturbation kernel ``x_t ~ N(x_0, sigma(t)^2 I)`` and terminal distribution
``N(0, sigma_max^2 I)``. The reverse SDE is ``dx = -g^2 grad log p_t(x) dt + g dW_bar`` with
``dt < 0``; the probability-flow ODE is ``dx = -1/2 g^2 grad log p_t(x) dt``.

Reverse integration is done in the reversed clock ``s = 1 - t`` so that diffrax always
integrates *forwards* in time: diffrax 0.7.2's stochastic Runge-Kutta solvers are wrong for
``t0 > t1`` (patrick-kidger/diffrax#598), and this sidesteps that class of bug for every
solver. In ``s`` the reverse SDE reads ``dx = g(1-s)^2 score(x, 1-s) ds + g(1-s) dW_s``.

This module is the only place in blindlens that imports diffrax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax

from .._types import Array, Float, PRNGKeyArray
from ..physics.linear_operator import conjugate_gradient

__all__ = [
    "VESDE",
    "reverse_time_grid",
    "ReverseDiffusion",
    "sample_reverse_diffusion",
    "LinearlyImplicitEulerMaruyama",
    "SOLVER_NAMES",
]

ScoreFn = Callable[[Float[Array, "..."], Float[Array, ""], object], Float[Array, "..."]]
SolverName = Literal["euler", "heun", "imex"]


class VESDE(eqx.Module):
    """Variance-exploding SDE with a geometric noise schedule.

    Parameters
    ----------
    sigma_min, sigma_max
        Noise standard deviation at ``t = 0`` and ``t = 1``, in the units of the data
        (pixel values).
    """

    sigma_min: float = eqx.field(static=True)
    sigma_max: float = eqx.field(static=True)

    def __check_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}."
            )

    def sigma(self, t):
        """Marginal noise std ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def marginal_std(self, t):
        """Std of the perturbation kernel ``p(x_t | x_0)``; equal to :meth:`sigma`."""
        return self.sigma(t)

    def diffusion(self, t):
        """``g(t) = sqrt(d sigma^2 / dt) = sigma(t) sqrt(2 ln(sigma_max/sigma_min))``."""
        return self.sigma(t) * jnp.sqrt(2.0 * jnp.log(self.sigma_max / self.sigma_min))

    def drift(self, x, t):
        """Forward drift; zero for the VE SDE."""
        return jnp.zeros_like(x)

    def time_at_sigma(self, sigma):
        """Inverse of :meth:`sigma`: the time at which the marginal std equals ``sigma``."""
        return jnp.log(sigma / self.sigma_min) / jnp.log(self.sigma_max / self.sigma_min)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, "..."]:
        """Draw from the terminal distribution ``N(0, sigma_max^2 I)``."""
        return self.sigma_max * jr.normal(key, shape)

    def perturb(self, key: PRNGKeyArray, x0, t):
        """Draw ``x_t ~ N(x_0, sigma(t)^2 I)``; returns ``(x_t, noise)`` with unit-variance noise."""
        noise = jr.normal(key, x0.shape, x0.dtype)
        return x0 + self.sigma(t) * noise, noise


def reverse_time_grid(num_steps: int, t_final: float = 1e-3, t_start: float = 1.0) -> Float[Array, " num_steps+1"]:
    """Uniform diffusion times from ``t_start`` (default 1) down to ``t_final`` (``num_steps`` intervals).

    ``t_start`` may be a traced scalar (checked only when concrete).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not 0 <= t_final < 1:
        raise ValueError(f"t_final must be in [0, 1), got {t_final}.")
    # a traced t_start (chosen at run time, e.g. from the operator's spectrum) is the caller's to check
    if not isinstance(t_start, jax.core.Tracer) and not t_final < float(t_start) <= 1:
        raise ValueError(f"t_start must be in (t_final, 1] = ({t_final}, 1], got {t_start}.")
    return jnp.linspace(t_start, t_final, num_steps + 1)


class LinearlyImplicitEulerMaruyama(diffrax.AbstractItoSolver):
    """IMEX Euler-Maruyama: explicit drift and noise, a stiff *affine* drift taken implicitly.

    For ``dy = f(s, y) ds + l(s, y) ds + G(s) dW`` with ``l`` affine in ``y`` and symmetric
    negative semi-definite linear part (``l(s, y) = c(s) - L(s) y``, ``L`` SPD), one step is the
    theta-method on ``l`` and Euler-Maruyama on the rest:

        (I + theta h L(s_1)) y_1 = y_0 + h f(s_0, y_0) + theta h c(s_1)
                                   + (1 - theta) h l(s_0, y_0) + G(s_0) dW,    h = s_1 - s_0,

    solved matrix-free by conjugate gradients warm-started at ``y_0``. The linear part is
    recovered from ``l`` itself, ``L v = l(s_1, 0) - l(s_1, v)``, so any affine term works.
    This is an implicit-explicit (IMEX) scheme in the sense of Ascher, Ruuth & Wetton (1995,
    SIAM J. Numer. Anal. 32, 797) with an Ito noise increment: strong order 1/2 like
    Euler-Maruyama, but A-stable in the stiff linear part for ``theta >= 1/2``, so the step is no
    longer bounded by ``2 / lambda_max(L)``. The choice of ``theta`` trades two errors: for a stiff
    linear mode (``h lambda >> 1``) the amplification factor tends to ``-(1 - theta) / theta``, so
    ``theta = 1/2`` (Crank-Nicolson) does not damp stiff transients (the ``N(0, sigma_max^2)``
    start and each step's noise survive with a flipping sign), while ``theta = 1`` damps them but
    shrinks the stationary variance of the mode by ``1 / (1 + h lambda / 2)`` (``theta = 1/2``
    keeps it exact). Measured (docs/imex_solver.md): with CLA on a trained-prior study system,
    ``theta = 1/2`` gives chi^2/N ~ 1e8 at 10 steps and ~ 6e5 at 25, ``theta = 0.6`` ~ 4e4 at
    10 steps; ``theta = 0.75`` and ``1`` are fine at 10 steps (1.07, 1.05) and on the 16x16
    exact-Gaussian problem ``0.75`` is the more accurate of those two. Default ``theta = 0.75``.

    In blindlens the stiff part is a likelihood score that is affine in ``x_t`` (CLA):
    with lensing, ``g^2 A^T D^{-1} A`` reaches ``lambda_max ~ 6e3`` on the trained-prior study
    problems, so explicit Euler needs > 3000 steps there while this scheme is stable at 50.

    Parameters
    ----------
    rtol
        Relative residual tolerance of the CG solve, ``||r|| <= rtol ||b||``.
    max_steps
        CG iteration cap per step (the iterate is used even when it is reached).
    theta
        Implicitness of the stiff part, in ``[1/2, 1]``.

    Terms: ``MultiTerm(ODETerm(f), ODETerm(l))`` (an ODE) or
    ``MultiTerm(ODETerm(f), ODETerm(l), ControlTerm(G, brownian))``.
    """

    rtol: float = 1e-5
    max_steps: int = 200
    theta: float = 0.75

    term_structure: ClassVar = diffrax.MultiTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def __check_init__(self):
        if not 0.5 <= self.theta <= 1.0:
            raise ValueError(f"theta must be in [0.5, 1] for A-stability, got {self.theta}.")

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        explicit, stiff, *noise = terms.terms
        h = t1 - t0
        rhs = y0 + explicit.vf_prod(t0, y0, args, h)
        if noise:
            (noise,) = noise
            rhs = rhs + noise.vf_prod(t0, y0, args, noise.contr(t0, t1))
        theta = self.theta
        offset = stiff.vf(t1, jnp.zeros_like(y0), args)
        rhs = rhs + theta * h * offset
        if theta < 1:
            rhs = rhs + (1 - theta) * h * stiff.vf(t0, y0, args)

        def matvec(v):
            return v - theta * h * (stiff.vf(t1, v, args) - offset)

        y1, _ = conjugate_gradient(matvec, rhs, self.rtol, self.max_steps, x0=y0)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


_SOLVERS = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "imex": LinearlyImplicitEulerMaruyama,
}
SOLVER_NAMES = tuple(_SOLVERS)
"""Names accepted for ``solver`` by :class:`ReverseDiffusion` and :func:`sample_reverse_diffusion`."""


def _make_solver(solver):
    """A solver instance from a name in ``_SOLVERS`` or a :class:`LinearlyImplicitEulerMaruyama`."""
    if isinstance(solver, LinearlyImplicitEulerMaruyama):
        return solver
    try:
        return _SOLVERS[solver]()
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown reverse-diffusion solver {solver!r}; choose one of {sorted(_SOLVERS)} or pass a "
            "LinearlyImplicitEulerMaruyama(theta=..., rtol=..., max_steps=...). "
            "Stochastic Runge-Kutta solvers (SRA1, ShARK, SEA) are not offered: diffrax 0.7.2 "
            "integrates them wrongly backwards in time, and blindlens' VE noise is additive, "
            "where Heun already has strong order 1."
        ) from None


def is_implicit_solver(solver) -> bool:
    """Whether ``solver`` (a name or an instance) is the IMEX solver, which needs a stiff part."""
    return isinstance(_make_solver(solver), LinearlyImplicitEulerMaruyama)


class ReverseDiffusion(eqx.Module):
    """Step-by-step reverse-time integration of a VE diffusion with a diffrax solver.

    The state is the flattened image; a step moves it from diffusion time ``t0`` to ``t1 < t0``.
    Use :meth:`step` to interleave other updates (lens moves, Langevin correctors) between
    steps, or :func:`sample_reverse_diffusion` for a whole trajectory.

    Parameters
    ----------
    sde
        The VE SDE.
    score_fn
        ``score_fn(x, t, args) -> grad_x log p_t(x | ...)`` on arrays of the image shape.
    shape
        Image shape.
    solver
        ``"euler"`` (Euler-Maruyama, strong order 1/2), ``"heun"`` (strong order 1 for
        additive noise) or ``"imex"`` (:class:`LinearlyImplicitEulerMaruyama` with its defaults, or
        an instance of it for other settings: ``score_fn`` explicit, ``stiff_score_fn``
        implicit; needs ``stiff_score_fn``).
    probability_flow
        Integrate the deterministic probability-flow ODE instead of the reverse SDE.
    stiff_score_fn
        Optional second part of the score, affine in ``x`` with a symmetric negative
        semi-definite linear part (e.g. the CLA likelihood score). The drift uses
        ``score_fn + stiff_score_fn``; only ``"imex"`` treats it implicitly.
    """

    sde: VESDE
    score_fn: ScoreFn = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    solver_name: str | LinearlyImplicitEulerMaruyama = eqx.field(static=True, default="euler")
    probability_flow: bool = eqx.field(static=True, default=False)
    stiff_score_fn: ScoreFn | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if is_implicit_solver(self.solver_name) and self.stiff_score_fn is None:
            raise ValueError(
                "solver='imex' treats a stiff affine part of the score implicitly, but no "
                "stiff_score_fn was given; pass one (e.g. a CLA likelihood score) or use 'euler'."
            )

    def _terms(self, key: PRNGKeyArray):
        sde, shape, score_fn, stiff_fn = self.sde, self.shape, self.score_fn, self.stiff_score_fn
        scale = 0.5 if self.probability_flow else 1.0
        split = is_implicit_solver(self.solver_name)

        def as_drift(fn):
            def drift(s, y, args):
                t = 1.0 - s
                return scale * sde.diffusion(t) ** 2 * fn(y.reshape(shape), t, args).reshape(-1)

            return diffrax.ODETerm(drift)

        if stiff_fn is not None and not split:
            drift_terms = (as_drift(lambda x, t, args: score_fn(x, t, args) + stiff_fn(x, t, args)),)
        elif split:
            drift_terms = (as_drift(score_fn), as_drift(stiff_fn))
        else:
            drift_terms = (as_drift(score_fn),)
        if self.probability_flow:
            return drift_terms[0] if len(drift_terms) == 1 else diffrax.MultiTerm(*drift_terms)
        size = 1
        for n in shape:
            size *= n
        brownian = diffrax.UnsafeBrownianPath(shape=(size,), key=key)

        def noise(s, y, args):
            return lineax.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion(1.0 - s), y.dtype))

        return diffrax.MultiTerm(*drift_terms, diffrax.ControlTerm(noise, brownian))

    def step(self, key: PRNGKeyArray, x, t0, t1, args=None):
        """Advance ``x`` (image shape) from diffusion time ``t0`` to ``t1 < t0``.

        ``key`` is used for this step's Brownian increment only.
        """
        solver = _make_solver(self.solver_name)
        terms = self._terms(key)
        s0, s1 = 1.0 - t0, 1.0 - t1
        y0 = x.reshape(-1)
        state = solver.init(terms, s0, s1, y0, args)
        y1, _, _, _, _ = solver.step(terms, s0, s1, y0, args, state, made_jump=False)
        return y1.reshape(self.shape)


def langevin_corrector(key: PRNGKeyArray, x, score, snr: float):
    """One annealed-Langevin corrector move (Song et al. 2021, Alg. 5).

    Step size ``eps = 2 (snr ||z|| / ||score||)^2``; ``x <- x + eps score + sqrt(2 eps) z``.
    """
    z = jr.normal(key, x.shape, x.dtype)
    eps = 2.0 * (snr * jnp.linalg.norm(z) / (jnp.linalg.norm(score) + 1e-30)) ** 2
    return x + eps * score + jnp.sqrt(2.0 * eps) * z


def sample_reverse_diffusion(
    key: PRNGKeyArray,
    sde: VESDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    *,
    args=None,
    num_steps: int = 500,
    t_final: float = 1e-3,
    solver: SolverName | LinearlyImplicitEulerMaruyama = "euler",
    probability_flow: bool = False,
    corrector_steps: int = 0,
    corrector_snr: float = 0.16,
    denoise: bool = True,
    x_init: Float[Array, "..."] | None = None,
    stiff_score_fn: ScoreFn | None = None,
    t_start: float = 1.0,
) -> Float[Array, "..."]:
    """Draw one sample by integrating the reverse VE diffusion from ``t_start`` (default 1) to ``t_final``.

    Parameters
    ----------
    key
        PRNG key; the result is a deterministic function of it.
    sde, score_fn, shape
        The diffusion, the (posterior or prior) score ``score_fn(x, t, args)`` and the image shape.
    num_steps
        Number of uniform time steps.
    solver
        ``"euler"``, ``"heun"`` or ``"imex"`` (stiff part implicit, see
        :class:`LinearlyImplicitEulerMaruyama`).
    probability_flow
        Use the probability-flow ODE (deterministic given the initial draw).
    corrector_steps, corrector_snr
        Langevin corrector moves after each predictor step (predictor-corrector sampling).
    denoise
        Finish with Tweedie's denoiser ``x + sigma(t_final)^2 score(x, t_final)``, which removes
        the terminal ``sigma_min`` noise.
    x_init
        Starting state at ``t_start``; default a draw from ``N(0, sigma_max^2 I)`` (which is the
        marginal only at ``t_start = 1``).
    stiff_score_fn
        Optional affine part of the score (see :class:`ReverseDiffusion`); the corrector and the
        final denoise use the full score ``score_fn + stiff_score_fn``.
    t_start
        First diffusion time: ``< 1`` continues a trajectory from a noised state ``x_init`` (e.g.
        a partial refresh ``x_t = x_0 + sigma(t) z`` of a previous sample), ``num_steps`` uniform
        steps down to ``t_final``.

    Returns
    -------
    The sample, of shape ``shape``. Use ``jax.vmap`` over keys for many samples.
    """
    key_init, key_path = jr.split(key)
    x = sde.prior_sample(key_init, shape) if x_init is None else x_init
    ts = reverse_time_grid(num_steps, t_final, t_start)
    integrator = ReverseDiffusion(sde, score_fn, shape, solver, probability_flow, stiff_score_fn)

    def full_score(x, t, args):
        if stiff_score_fn is None:
            return score_fn(x, t, args)
        return score_fn(x, t, args) + stiff_score_fn(x, t, args)

    def body(x, inputs):
        t0, t1, k = inputs
        k_step, k_corr = jr.split(k)
        x = integrator.step(k_step, x, t0, t1, args)

        def correct(i, x):
            return langevin_corrector(jr.fold_in(k_corr, i), x, full_score(x, t1, args), corrector_snr)

        x = jax.lax.fori_loop(0, corrector_steps, correct, x)
        return x, None

    keys = jr.split(key_path, num_steps)
    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], keys))
    if denoise:
        x = x + sde.sigma(ts[-1]) ** 2 * full_score(x, ts[-1], args)
    return x
