"""A lens move that carries the source along: nonequilibrium candidate Monte Carlo (NCMC).

The lens mixes slowly because it moves only within its conditional given the current source, and
the source follows a lens change over many split-Gibbs moves (docs/performance.md, "Why the lens
mixes slowly"). A joint move that proposes a lens change *and* the source change that keeps the
image needs the source prior's density ratio, which a diffusion prior does not give cheaply, and
the prior at its noise floor rejects a deterministically transported source
(docs/performance.md, "A transport move, tried and not kept").

NCMC (Nilmeier, Crooks, Minh & Chodera 2011, PNAS 108, E1009; the annealed-transition form of
Neal 1996, Stat. Comput. 6, 353) avoids the prior's density altogether. From ``(u, s)``:

1. draw a displacement ``eps ~ N(0, c^2 C)`` (``C`` a fixed covariance, e.g. the lens block's
   metric ``M^{-1}``; ``c`` = ``scale``) and the path ``u_k = u + (k / T) eps``, ``k = 0..T``;
2. for ``k = 1..T``: *perturb* the lens ``u_{k-1} -> u_k`` at the current source, adding
   ``U(u_{k-1}, s) - U(u_k, s)`` to the work ``W`` (``U(u, s) = -log p(theta(u), y | s)`` in
   unconstrained coordinates, the lens block's potential); then, for ``k < T``, *propagate* the
   source by one source move that leaves ``pi_k(s) ∝ p(s) exp(-U(u_k, s))`` invariant (the
   sweep's split-Gibbs move at lens ``u_k``);
3. accept ``(u_T, s_{T-1})`` with probability ``min(1, exp(W))``, else keep ``(u, s)``.

The intermediate targets differ from each other only in the likelihood and the lens prior, so the
source prior cancels from every term of ``W``: no prior density is needed. The protocol is its own
mirror image (the reverse move from ``u_T`` along ``-eps`` visits the same lenses in reverse order
with the same kernels), and each kernel is reversible with respect to its ``pi_k`` (the
split-Gibbs move is a two-block data-augmentation Gibbs step, whose marginal chain on ``s`` is
reversible), so the move satisfies detailed balance with respect to ``p(u, s | y)``; it is exact
to the precision of the source move itself. ``T = 1`` is a plain Metropolis move of the lens at a
fixed source.

Cost per proposal: ``T - 1`` source moves (their network passes) and ``2 T`` potential
evaluations (forward models, no network pass). A rejected proposal discards its source moves.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Float, Int, PRNGKeyArray, SourceImage
from .source_moves import counted_move

__all__ = ["NCMCResult", "ncmc_lens_move"]


class NCMCResult(NamedTuple):
    """Outcome of one NCMC proposal.

    Attributes
    ----------
    lens, source
        The chain's new state (the proposal's end where accepted, else the start).
    accept_prob
        ``min(1, exp(W))``.
    log_work
        ``W``, the accumulated log target ratio of the perturbations.
    accepted
        Whether the proposal was taken.
    num_score_evals
        Network passes of the path's source moves (spent whether or not it was accepted).
    """

    lens: Float[Array, " d"]
    source: SourceImage
    accept_prob: Float[Array, ""]
    log_work: Float[Array, ""]
    accepted: Array
    num_score_evals: Int[Array, ""]


def ncmc_lens_move(
    key: PRNGKeyArray,
    core,
    u: Float[Array, " d"],
    source: SourceImage,
    model,
    covariance: Float[Array, "d d"],
    steps: int,
    scale: float,
) -> NCMCResult:
    """One NCMC proposal of the lens, the source carried along by ``steps - 1`` source moves.

    Parameters
    ----------
    key
        PRNG key.
    core
        The :class:`~blindlens.gibbs_core.GibbsCore` whose potential and source move are used
        (its ``source_move`` must be a ``p(s | theta, y)``-reversible move).
    u
        Current unconstrained lens coordinates ``(d,)``.
    source
        Current source ``(sy, sx)``.
    model
        The observation's :class:`~blindlens.numpyro_model.JointModel`.
    covariance
        ``C``: the displacement is ``eps ~ N(0, scale^2 C)`` (e.g. the lens block's metric
        ``M^{-1}``, the conditional's covariance given the source, or an estimate of the lens's
        marginal covariance, which is wider along the lens-source degeneracy).
    steps
        ``T >= 1``, the perturbation steps of the path (static).
    scale
        ``c``, the displacement's length in units of the metric (static).
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"NCMC needs steps >= 1, got {steps}.")
    if core.source_move is None:
        raise ValueError("NCMC carries the source by the core's source_move; a core drawing afresh has none.")
    k_dir, k_acc, k_path = jr.split(key, 3)
    chol = jnp.linalg.cholesky(0.5 * (covariance + covariance.T))
    eps = float(scale) * (chol @ jr.normal(k_dir, u.shape, u.dtype))

    def lens_at(k):
        return u + (k / steps) * eps

    def perturb(k, s, work):  # u_{k-1} -> u_k at source s
        return work + core.potential(lens_at(k - 1), s, model) - core.potential(lens_at(k), s, model)

    def stage(carry, xs):
        s, work, passes = carry
        k, kk = xs
        work = perturb(k, s, work)
        op, data, noise = core._source_inputs(lens_at(k), model)
        s, cost = counted_move(core.source_move, kk, op, data, noise, s)
        return (s, work, passes + cost), None

    zero = jnp.zeros((), u.dtype)
    carry = (source, zero, jnp.zeros((), jnp.int32))
    if steps > 1:
        ks = jnp.arange(1, steps, dtype=u.dtype)
        carry, _ = jax.lax.scan(stage, carry, (ks, jr.split(k_path, steps - 1)))
    s_end, work, passes = carry
    work = perturb(jnp.asarray(steps, u.dtype), s_end, work)
    work = jnp.where(jnp.isfinite(work), work, -jnp.inf)
    accept_prob = jnp.exp(jnp.minimum(work, 0.0))
    accepted = jr.uniform(k_acc, (), u.dtype) < accept_prob
    new_u = jnp.where(accepted, u + eps, u)
    new_s = jnp.where(accepted, s_end, source)
    return NCMCResult(new_u, new_s, accept_prob, work, accepted, passes)
