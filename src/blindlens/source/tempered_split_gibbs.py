"""Replica exchange over the likelihood's temperature with split-Gibbs moves: mode-hopping, still exact.

The split-Gibbs move (:mod:`blindlens.source.split_gibbs`) is exact but local: its auxiliary noise
``rho`` is capped by the best-measured direction (``rho^2 lambda_max(A^T W A) = coupling``), so a
chain stays in the mode it starts in (on the two-mode Gaussian-mixture test, 400 prior-started
chains keep the prior's weights, 0.50 against the posterior's 0.36). This module runs ``K``
replicas of the source at likelihood temperatures ``1 = beta_0 > beta_1 > ... > beta_{K-1} > 0``,
replica ``k`` targeting

``pi_k(s) ∝ p_f(s) N(y; A s, W^-1)^{beta_k}``,

each moved by the split-Gibbs move of its own tempered problem (inverse noise variance
``beta_k W``, hence ``rho_k = rho_0 / sqrt(beta_k)``: hot replicas denoise from far larger noise
and cross between modes), and swaps neighbours' states with probability

``min(1, exp((beta_k - beta_{k+1}) (l(s_{k+1}) - l(s_k))))``, ``l(s) = -1/2 (y - A s)^T W (y - A s)``.

The prior cancels from the ratio, so the swap needs no density of the diffusion prior (the wall
every transport move in ``docs/performance.md`` met): the product of the ``pi_k`` is invariant,
and replica 0 samples the posterior exactly (up to the denoise's discretisation, as for one
split-Gibbs move). Swaps alternate between even and odd pairs (the deterministic even-odd scheme
of Okabe et al. 2001; Syed et al. 2022, JRSS B 84, 321, show it makes round trips through the
ladder scale linearly rather than quadratically in ``K``).

Cost: ``K`` split-Gibbs moves per step; the hot replicas' denoise runs over a longer interval
(``ceil(log(sqrt(sigma_f^2 + rho_k^2) / sigma_f) / denoise_step_size)`` steps, at most
``denoise_steps``). The ladder must be dense enough for swaps to pass: the log-likelihood's sd
under the posterior grows like ``sqrt(d / 2)`` with ``d`` the number of data-measured source
directions, so the rungs needed grow like ``sqrt(d) log(1 / beta_min)``. That is cheap on small
or multimodal problems and expensive on a 64x64 source at high SNR; the swap rates
(:attr:`TemperedResult.swap_rate`) say whether a ladder is dense enough (aim for 0.2-0.5).

* :func:`geometric_ladder` builds ``beta_k``.
* :func:`initial_state` and :func:`tempered_step`: the pure kernel over :class:`TemperedState`.
* :func:`sample_source_posterior_tempered` runs chains for a fixed lens.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import Array, Float, Image, Int, PRNGKeyArray
from ..physics.linear_operator import AbstractLinearOperator
from ..prior.gaussian_prior import inverse_noise_variance
from ..prior.source_prior import AbstractSourcePrior
from .split_gibbs import SplitGibbsConfig, _moves_at, check_chain_inputs, coupling_sigma

__all__ = [
    "TemperedState",
    "TemperedResult",
    "geometric_ladder",
    "initial_state",
    "log_likelihood",
    "tempered_step",
    "sample_source_posterior_tempered",
]


class TemperedState(NamedTuple):
    """State of one replica-exchange chain.

    Attributes
    ----------
    sources
        One source per rung, ``(K, sy, sx)`` in image units; ``sources[0]`` is the posterior's.
    swaps_accepted, swaps_attempted
        Per neighbouring pair ``(k, k + 1)``, ``(K - 1,)`` counts since the state was made.
    passes
        Network passes taken so far (all rungs).
    step
        Steps taken; its parity picks the pairs a step tries to swap (even-odd scheme).
    """

    sources: Float[Array, "K sy sx"]
    swaps_accepted: Int[Array, " Km1"]
    swaps_attempted: Int[Array, " Km1"]
    passes: Int[Array, ""]
    step: Int[Array, ""]


class TemperedResult(NamedTuple):
    """Output of :func:`sample_source_posterior_tempered`.

    Attributes
    ----------
    samples
        The ``beta = 1`` replica's kept states, ``(num_chains, num_samples, sy, sx)``.
    swap_rate
        Accepted over attempted swaps per chain and neighbouring pair, ``(num_chains, K - 1)``,
        counted over the kept steps.
    passes
        Network passes per chain, burn-in included, ``(num_chains,)``.
    """

    samples: Float[Array, "chains draws sy sx"]
    swap_rate: Float[Array, "chains Km1"]
    passes: Int[Array, " chains"]


def geometric_ladder(num_rungs: int, beta_min: float) -> Float[Array, " K"]:
    """Temperatures ``beta_k = beta_min^(k / (K - 1))``: from 1 down to ``beta_min``, evenly in ``log beta``.

    Parameters
    ----------
    num_rungs
        ``K >= 2`` (one rung is plain split Gibbs).
    beta_min
        Hottest rung's likelihood weight, in ``(0, 1)``. Pick it so that ``rho_0 / sqrt(beta_min)``
        (the hottest rung's auxiliary noise, image units) is about the distance between the modes
        to cross.
    """
    if int(num_rungs) < 2:
        raise ValueError(f"num_rungs must be >= 2, got {num_rungs}; with one rung use split_gibbs_move.")
    if not 0.0 < float(beta_min) < 1.0:
        raise ValueError(f"beta_min must be in (0, 1), got {beta_min}.")
    return jnp.asarray(np.geomspace(1.0, float(beta_min), int(num_rungs)))


def _check_ladder(betas) -> Float[Array, " K"]:
    b = np.asarray(betas, np.float64)
    if b.ndim != 1 or b.size < 1:
        raise ValueError(f"betas must be a 1-d ladder of temperatures, got shape {b.shape}.")
    if b[0] != 1.0:
        raise ValueError(f"betas must start at 1 (the posterior's rung), got {b[0]}; e.g. geometric_ladder(K, beta_min).")
    if np.any(b <= 0) or np.any(np.diff(b) >= 0):
        raise ValueError(f"betas must be positive and strictly decreasing, got {b.tolist()}.")
    return jnp.asarray(b)


def log_likelihood(
    operator: AbstractLinearOperator, data: Image, inv_var: Image, sources: Float[Array, "*batch sy sx"]
) -> Float[Array, " *batch"]:
    """``-1/2 (y - A s)^T W (y - A s)`` per source (masked pixels have ``W = 0``), in nats, constant dropped."""
    flat = sources.reshape((-1,) + tuple(sources.shape[-2:]))
    resid = jax.vmap(lambda s: data - operator(s))(flat)
    ll = -0.5 * jnp.sum(inv_var * resid**2, axis=(-2, -1))
    return ll.reshape(sources.shape[:-2])


def initial_state(sources: Float[Array, "K sy sx"]) -> TemperedState:
    """A state with the given per-rung sources and zeroed counters."""
    k = sources.shape[0]
    zeros = jnp.zeros((max(k - 1, 0),), jnp.int32)
    return TemperedState(sources, zeros, zeros, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))


def tempered_step(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    inv_var: Image,
    state: TemperedState,
    betas: Float[Array, " K"],
    rho: Float[Array, ""],
    config: SplitGibbsConfig = SplitGibbsConfig(),
) -> TemperedState:
    """One step: a split-Gibbs move on every rung, then the even or odd neighbours' swaps.

    Pure and jit-compatible. ``inv_var`` is the untempered ``W``; ``rho`` the ``beta = 1`` rung's
    auxiliary noise (:func:`blindlens.source.split_gibbs.coupling_sigma`); rung ``k`` moves at
    ``rho / sqrt(beta_k)``, capped at 0.99 of the prior's ``sigma_max`` (a smaller ``rho`` stays exact).
    """
    k_move, k_swap = jr.split(key)
    rhos = jnp.minimum(rho / jnp.sqrt(betas), 0.99 * prior.sde.sigma_max)

    def move(k, s, beta, r):
        return _moves_at(k, prior, operator, data, beta * inv_var, s, r, 1, config)

    keys = jr.split(k_move, betas.shape[0])
    sources, passes = jax.vmap(move)(keys, state.sources, betas, rhos)

    num_pairs = betas.shape[0] - 1
    if num_pairs == 0:
        return state._replace(sources=sources, passes=state.passes + jnp.sum(passes), step=state.step + 1)
    ll = log_likelihood(operator, data, inv_var, sources)
    lower = jnp.arange(num_pairs)
    tried = (lower % 2) == (state.step % 2)  # disjoint pairs: all of one parity at once
    log_ratio = _swap_log_ratio(betas, ll)
    accept = tried & (jnp.log(jr.uniform(k_swap, (num_pairs,))) < log_ratio)
    # rung k takes k+1's state where pair k swaps, rung k+1 takes k's
    from_above = jnp.concatenate([accept, jnp.zeros((1,), bool)])
    from_below = jnp.concatenate([jnp.zeros((1,), bool), accept])
    idx = jnp.arange(betas.shape[0])
    src = jnp.where(from_above, idx + 1, jnp.where(from_below, idx - 1, idx))
    return TemperedState(
        sources[src],
        state.swaps_accepted + accept.astype(jnp.int32),
        state.swaps_attempted + tried.astype(jnp.int32),
        state.passes + jnp.sum(passes),
        state.step + 1,
    )


def _swap_log_ratio(betas, ll):
    """Log Metropolis ratio of swapping rungs ``k`` and ``k + 1``, per pair: the prior cancels."""
    return (betas[:-1] - betas[1:]) * (ll[1:] - ll[:-1])


@eqx.filter_jit
def _run(keys, prior, operator, data, w, init, betas, config, num_samples, burn_in, thin):
    rho = coupling_sigma(keys[0], prior, operator, w, config)

    def chain(key, s0):
        state = initial_state(jnp.broadcast_to(s0, (betas.shape[0],) + s0.shape))
        k_burn, k_keep = jr.split(key)

        def advance(st, k):
            return tempered_step(k, prior, operator, data, w, st, betas, rho, config), None

        state, _ = jax.lax.scan(advance, state, jr.split(k_burn, burn_in)) if burn_in else (state, None)
        state = state._replace(swaps_accepted=jnp.zeros_like(state.swaps_accepted),
                               swaps_attempted=jnp.zeros_like(state.swaps_attempted))

        def draw(st, k):
            st, _ = jax.lax.scan(advance, st, jr.split(k, thin))
            return st, st.sources[0]

        state, kept = jax.lax.scan(draw, state, jr.split(k_keep, num_samples))
        rate = state.swaps_accepted / jnp.maximum(state.swaps_attempted, 1)
        return kept, rate, state.passes

    return jax.vmap(chain)(keys, init)


def sample_source_posterior_tempered(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    init: Float[Array, "num_chains sy sx"],
    betas: Float[Array, " K"],
    *,
    num_samples: int,
    burn_in: int = 20,
    thin: int = 1,
    config: SplitGibbsConfig = SplitGibbsConfig(),
) -> TemperedResult:
    """Run one replica-exchange chain per starting source (every rung starts there) for a fixed lens.

    Chain ``i`` uses ``jax.random.split(key, num_chains)[i]``. The kept states are the ``beta = 1``
    rung's after every ``thin`` steps; compare chains (R-hat) and read the swap rates before
    trusting them.

    Parameters
    ----------
    key, prior, operator, data, noise_sigma
        As for :func:`blindlens.source.split_gibbs.split_gibbs_move`.
    init
        Starting sources, ``(num_chains, sy, sx)``.
    betas
        Likelihood temperatures, ``1`` first and strictly decreasing (:func:`geometric_ladder`).
    num_samples, burn_in, thin
        Kept states per chain, steps discarded first, steps between kept states.
    config
        Split-Gibbs move settings of every rung (its ``num_moves`` is ignored: one move per rung
        per step). Raise ``denoise_steps`` if the hottest rung's interval needs more than it allows
        at ``denoise_step_size``.

    Returns
    -------
    :class:`TemperedResult`.

    References
    ----------
    Swendsen & Wang (1986), PRL 57, 2607; Geyer (1991), "Markov chain Monte Carlo maximum
    likelihood"; Syed, Bouchard-Côté, Deligiannidis & Doucet (2022), JRSS B 84, 321.
    """
    init = check_chain_inputs(prior, operator, data, init, num_samples, burn_in, thin)
    betas = _check_ladder(betas)
    data = jnp.asarray(data)
    w = inverse_noise_variance(noise_sigma, operator.image_shape, operator).astype(data.dtype)
    keys = jr.split(key, init.shape[0])
    kept, rate, passes = _run(keys, prior, operator, data, w, init.astype(data.dtype), betas.astype(data.dtype),
                              config, int(num_samples), int(burn_in), int(thin))
    return TemperedResult(kept, rate, passes)
