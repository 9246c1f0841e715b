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
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax

from ._types import Array, Float, PRNGKeyArray

__all__ = [
    "VESDE",
    "reverse_time_grid",
    "ReverseDiffusion",
    "sample_reverse_diffusion",
]

ScoreFn = Callable[[Float[Array, "..."], Float[Array, ""], object], Float[Array, "..."]]
SolverName = Literal["euler", "heun"]


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


def reverse_time_grid(num_steps: int, t_final: float = 1e-3) -> Float[Array, " num_steps+1"]:
    """Uniform diffusion times from ``1`` down to ``t_final`` (``num_steps`` intervals)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not 0 <= t_final < 1:
        raise ValueError(f"t_final must be in [0, 1), got {t_final}.")
    return jnp.linspace(1.0, t_final, num_steps + 1)


_SOLVERS = {"euler": diffrax.Euler, "heun": diffrax.Heun}


def _make_solver(name: str):
    try:
        return _SOLVERS[name]()
    except KeyError:
        raise ValueError(
            f"Unknown reverse-diffusion solver {name!r}; choose one of {sorted(_SOLVERS)}. "
            "Stochastic Runge-Kutta solvers (SRA1, ShARK, SEA) are not offered: diffrax 0.7.2 "
            "integrates them wrongly backwards in time, and blindlens' VE noise is additive, "
            "where Heun already has strong order 1."
        ) from None


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
        ``"euler"`` (Euler-Maruyama, strong order 1/2) or ``"heun"`` (strong order 1 for
        additive noise).
    probability_flow
        Integrate the deterministic probability-flow ODE instead of the reverse SDE.
    """

    sde: VESDE
    score_fn: ScoreFn = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    solver_name: str = eqx.field(static=True, default="euler")
    probability_flow: bool = eqx.field(static=True, default=False)

    def _terms(self, key: PRNGKeyArray):
        sde, shape, score_fn = self.sde, self.shape, self.score_fn
        scale = 0.5 if self.probability_flow else 1.0

        def drift(s, y, args):
            t = 1.0 - s
            score = score_fn(y.reshape(shape), t, args).reshape(-1)
            return scale * sde.diffusion(t) ** 2 * score

        if self.probability_flow:
            return diffrax.ODETerm(drift)
        size = 1
        for n in shape:
            size *= n
        brownian = diffrax.UnsafeBrownianPath(shape=(size,), key=key)

        def noise(s, y, args):
            return lineax.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion(1.0 - s), y.dtype))

        return diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(noise, brownian))

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
    solver: SolverName = "euler",
    probability_flow: bool = False,
    corrector_steps: int = 0,
    corrector_snr: float = 0.16,
    denoise: bool = True,
    x_init: Float[Array, "..."] | None = None,
) -> Float[Array, "..."]:
    """Draw one sample by integrating the reverse VE diffusion from ``t = 1`` to ``t_final``.

    Parameters
    ----------
    key
        PRNG key; the result is a deterministic function of it.
    sde, score_fn, shape
        The diffusion, the (posterior or prior) score ``score_fn(x, t, args)`` and the image shape.
    num_steps
        Number of uniform time steps.
    solver
        ``"euler"`` or ``"heun"``.
    probability_flow
        Use the probability-flow ODE (deterministic given the initial draw).
    corrector_steps, corrector_snr
        Langevin corrector moves after each predictor step (predictor-corrector sampling).
    denoise
        Finish with Tweedie's denoiser ``x + sigma(t_final)^2 score(x, t_final)``, which removes
        the terminal ``sigma_min`` noise.
    x_init
        Starting state at ``t = 1``; default a draw from ``N(0, sigma_max^2 I)``.

    Returns
    -------
    The sample, of shape ``shape``. Use ``jax.vmap`` over keys for many samples.
    """
    key_init, key_path = jr.split(key)
    x = sde.prior_sample(key_init, shape) if x_init is None else x_init
    ts = reverse_time_grid(num_steps, t_final)
    integrator = ReverseDiffusion(sde, score_fn, shape, solver, probability_flow)

    def body(x, inputs):
        t0, t1, k = inputs
        k_step, k_corr = jr.split(k)
        x = integrator.step(k_step, x, t0, t1, args)

        def correct(i, x):
            return langevin_corrector(jr.fold_in(k_corr, i), x, score_fn(x, t1, args), corrector_snr)

        x = jax.lax.fori_loop(0, corrector_steps, correct, x)
        return x, None

    keys = jr.split(key_path, num_steps)
    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], keys))
    if denoise:
        x = x + sde.sigma(ts[-1]) ** 2 * score_fn(x, ts[-1], args)
    return x
