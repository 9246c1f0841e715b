"""Gradient optimisers: the one module that imports optax.

Two users, two recipes of the same Adam (Kingma & Ba 2015):

* :func:`training_optimizer`: network training (:mod:`blindlens.training`): global-norm gradient
  clipping, then Adam with a linear learning-rate warm-up.
* :func:`adam_maximise`: the lens pre-fit and the evidence search
  (:mod:`blindlens.parametric_prefit`, :mod:`blindlens.lens_initialization`): a fixed number of
  Adam steps up a scalar objective, the step cosine-decayed to zero (Loshchilov & Hutter 2017) so
  the last iterates settle on the mode, inside one ``lax.scan`` (vmap-able over starts).

Shared by the ``prior`` and ``inference`` layers, like :mod:`blindlens._types`, so it imports no
other blindlens module.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from ._types import Array, Float, Scalar

__all__ = ["OptState", "adam_maximise", "training_optimizer"]

OptState = optax.OptState
"""An optimiser's state (a pytree)."""


def training_optimizer(learning_rate: float, warmup_steps: int, grad_clip: float) -> optax.GradientTransformation:
    """Global-norm clipping at ``grad_clip``, then Adam whose step rises linearly from 0 to
    ``learning_rate`` over ``warmup_steps`` steps and stays there."""
    schedule = optax.linear_schedule(0.0, learning_rate, max(int(warmup_steps), 1))
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(schedule))


def adam_maximise(
    objective: Callable[[Float[Array, " d"]], Scalar],
    u0: Float[Array, " d"],
    num_steps: int,
    learning_rate: float,
) -> tuple[Float[Array, " d"], Scalar]:
    """Maximise ``objective`` from ``u0`` by ``num_steps`` Adam steps with a cosine-decayed step.

    Step ``i`` (from 0) has the rate ``learning_rate * (1 + cos(pi i / num_steps)) / 2``; Adam's
    moments use ``beta1 = 0.9``, ``beta2 = 0.999``, ``eps = 1e-8``. A non-finite gradient entry
    counts as zero (the step goes on, the moments decay), so one bad evaluation does not poison
    the run.

    Parameters
    ----------
    objective
        Scalar function of a flat parameter vector (unconstrained units), to be maximised.
    u0
        Starting point.
    num_steps
        Adam steps (static).
    learning_rate
        Initial step size (unconstrained units).

    Returns
    -------
    u, value
        The last iterate and ``objective(u)`` (``-inf`` where it is not finite).
    """
    # Written out rather than ``optax.adam(optax.cosine_decay_schedule(...))``: the two are the same
    # iteration (tests/test_optimisers.py: equal to 1e-12 in float64), but in float32 their rounding
    # differs, and the multi-start pre-fit is sensitive enough to that (a bright deflector's light fit,
    # docs/real_data.md) that with the swap the survey-lens test's mirrored-frame pre-fit check
    # failed. This form keeps the pre-fit's float32 path as it was until the pre-fit is made robust.
    value_and_grad = jax.value_and_grad(objective)

    def step(carry, i):
        u, m, v = carry
        _, g = value_and_grad(u)
        g = jnp.where(jnp.isfinite(g), -g, 0.0)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        t = i + 1.0
        rate = learning_rate * 0.5 * (1 + jnp.cos(jnp.pi * i / num_steps))
        u = u - rate * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
        return (u, m, v), None

    zeros = jnp.zeros_like(u0)
    (u, _, _), _ = jax.lax.scan(step, (u0, zeros, zeros), jnp.arange(num_steps, dtype=u0.dtype))
    value = objective(u)
    return u, jnp.where(jnp.isfinite(value), value, -jnp.inf)
