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
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(int(num_steps), 1)))
    gradient = jax.grad(objective)

    def step(carry, _):
        u, state = carry
        g = gradient(u)
        g = jnp.where(jnp.isfinite(g), -g, 0.0)  # optax minimises
        updates, state = optimizer.update(g, state, u)
        return (optax.apply_updates(u, updates), state), None

    (u, _), _ = jax.lax.scan(step, (u0, optimizer.init(u0)), None, length=int(num_steps))
    value = objective(u)
    return u, jnp.where(jnp.isfinite(value), value, -jnp.inf)
