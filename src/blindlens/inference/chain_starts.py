"""Chain starts from a shared pool of warm-start trajectories, ranked by their fit.

Blind lensing is multi-modal: a wrong lens with a contorted source can be a self-consistent fixed
point of the Gibbs sweeps, and a chain started there stays (issue 14: one of two chains at
``theta_E`` 0.38 for a true 1.01, residual chi^2/N 4.3). Per-chain best-of-k warm starts
(:meth:`~blindlens.gibbs_kernel.BlindLensGibbs.warm_start_draw`) leave each chain on its own with
``k`` trajectories; a wrong mode that wins all ``k`` of one chain's tries is then kept.

Here all ``num_chains * k`` trajectories (the same total cost) go into one pool ranked by residual

    chi^2 = sum_unmasked ((y - A_theta s) / sigma)^2 .

The *dominant set* is every try within ``tolerance`` of the best; by default
``tolerance = max(2 sqrt(2 N), 0.05 chi^2_best)`` for ``N`` unmasked pixels: twice the sd of chi^2
for pure noise, or 5% of the best fit where the model cannot reach the noise (a source the prior
cannot represent, rough warm-start draws), so tries that fit like the best one are not told apart
while the wrong modes above (110-250% worse than the right basin's fit) are dropped. The chains take the dominant tries in order of fit;
when there are fewer dominant tries than chains, starts are repeated (each chain still has its own
PRNG key, so they separate during warm-up) and :attr:`ChainStarts.message` says so, because
repeated starts make R-hat less able to reveal a missed mode. Where the source grid's placement is
sampled, a repeated start gets a placement of its own with the source carried along
(:func:`~blindlens.source_shift_model.spread_shared_placements`), since the placement barely moves
within a chain and the pooled chains should average over placements rather than share one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import Array, Float, Int, PRNGKeyArray
from .gibbs_kernel import WARM_START_POOLS, BlindLensGibbs, lens_unconstrained
from .gibbsddrm import GibbsDDRMConfig, sample_gibbsddrm
from .lens_space import LensSpace as _LensSpace
from .numpyro_model import SOURCE_SITE, lens_from_values, nuisance_site_names
from .source_shift_model import spread_shared_placements

__all__ = [
    "WARM_START_POOLS",
    "ChainStarts",
    "chain_chi2",
    "default_mode_tolerance",
    "dominant_mode_starts",
    "gross_misfit_warning",
    "pooled_chain_starts",
    "prefit_starts",
    "prefit_try_runs",
    "reset_worse_chains",
]


class ChainStarts(NamedTuple):
    """Starts of ``num_chains`` chains chosen from a ranked pool of warm-start trajectories.

    Attributes
    ----------
    init_params
        ``{site: (num_chains, ...)}`` in NumPyro's unconstrained space for the lens sites, plus
        ``"source"`` (image units): pass as ``MCMC.run(..., init_params=...)`` or ``warmup``.
    chi2
        Residual chi^2 of every try in the pool, ``(num_tries,)``.
    chosen
        Index into the pool of each chain's start, ``(num_chains,)``.
    num_dominant
        Tries within ``tolerance`` of the best one.
    tolerance
        Chi^2 gap to the best try that still counts as the same mode.
    num_pixels
        Unmasked pixels ``N`` (chi^2 / N is the reduced chi^2).
    message
        A one-line report of the selection (printed by the CLI).
    """

    init_params: dict
    chi2: Float[Array, " tries"]
    chosen: Int[Array, " chains"]
    num_dominant: int
    tolerance: float
    num_pixels: int
    message: str


def default_mode_tolerance(num_pixels: int, best_chi2: float = 0.0) -> float:
    """``max(2 sqrt(2 N), 0.05 chi^2_best)``: twice the sd of a chi^2 with ``N`` degrees of freedom,
    or 5% of the best fit's chi^2 when that is larger (a model that does not reach the noise)."""
    return max(2.0 * math.sqrt(2.0 * num_pixels), 0.05 * float(best_chi2) if np.isfinite(best_chi2) else 0.0)


GROSS_MISFIT = 5.0
"""A pool whose best warm start fits at chi^2/N above this has probably not found the lens's basin.

Measured: the warm starts of systems whose basin the pre-fit found fit at chi^2/N 1.02-1.15 (96x96
lenstronomy systems, docs/joint_inference.md), the bundled HST example's at 3.10 (its bright
deflector; the run ends in the right basin at 1.086, docs/real_data.md); lenstronomy system 19 (a
source of ~20 compact knots over 3") started at 8.69 from a pre-fit lens at theta_E 2.1 for a true
0.91, and its chains ended at 7.2 after 84 minutes. A plain ratio to the noise variance, not a
number of chi^2 sds, which would flag the HST example's 3.10."""


def gross_misfit_warning(best_chi2: float, num_pixels: int) -> str:
    """A one-line warning when the best warm start misfits grossly (chi^2/N above :data:`GROSS_MISFIT`), else ``""``.

    Parameters
    ----------
    best_chi2
        Residual chi^2 of the pool's best try (not reduced).
    num_pixels
        Unmasked pixels ``N``.
    """
    reduced = float(best_chi2) / max(int(num_pixels), 1)
    if not reduced > GROSS_MISFIT:
        return ""
    return (f"; WARNING: the best warm start fits at chi^2/N {reduced:.2f} (above {GROSS_MISFIT:g}; noise alone "
            "gives 1): the lens's basin was probably not found (the pre-fit's Sérsic + shapelet source can be too "
            "simple for a clumpy galaxy), so the chains will likely stay in a wrong mode; check the residuals, "
            "and give the lens a tighter prior around a lens you trust (--lens-model FILE.py:function)")


def dominant_mode_starts(chi2, num_chains: int, tolerance: float) -> tuple[np.ndarray, int]:
    """Which tries the chains start from: the dominant set in order of fit, repeated if short.

    Parameters
    ----------
    chi2
        Residual chi^2 of each try; non-finite values never start a chain unless all are.
    num_chains
        Number of chains.
    tolerance
        Largest chi^2 gap to the best try that counts as the best mode.

    Returns
    -------
    chosen, num_dominant
        ``chosen[c]`` is the try chain ``c`` starts from.
    """
    chi2 = np.asarray(chi2, float)
    if num_chains < 1:
        raise ValueError(f"num_chains must be >= 1, got {num_chains}.")
    fit = np.where(np.isfinite(chi2), chi2, np.inf)
    order = np.argsort(fit, kind="stable")
    if not np.isfinite(fit[order[0]]):
        return order[np.arange(num_chains) % order.size], 0
    dominant = order[fit[order] <= fit[order[0]] + tolerance]
    return dominant[np.arange(num_chains) % dominant.size], int(dominant.size)


def pooled_chain_starts(
    kernel: BlindLensGibbs,
    key: PRNGKeyArray,
    num_chains: int,
    *,
    tries_per_chain: int | None = None,
    tolerance: float | None = None,
    pool: str | None = None,
) -> ChainStarts:
    """Starts for ``num_chains`` chains from one ranked pool of continuous-time warm starts.

    Runs up to ``num_chains * tries_per_chain`` :func:`~blindlens.gibbsddrm.sample_gibbsddrm`
    trajectories (default ``kernel.warm_start_tries`` per chain, the cost of the per-chain warm
    starts), each from its own prior draw of the lens or from the lens pre-fit's best lenses, and
    gives the chains the best-fitting ones (see the module docstring).

    With ``pool="adaptive"`` (opt-in: the kernel's ``warm_start_pool``) and starts from a lens
    pre-fit, the pool grows by ``num_chains`` trajectories at a time and stops as soon as every
    chain has its own start in the dominant set. The trajectories it runs are the first ones of the
    full pool (same keys, same starting lenses). Measured on lenstronomy systems 12-14
    (docs/performance.md): 2, 4 and 4 trajectories instead of 8; systems 12 and 14 end as with the
    full pool, but on system 13 both chains then ended in a worse mode (chi^2/N +0.054 above the
    truth's, lens 6 sd off, flagged only by R-hat), where the full pool's more diverse second start
    had reached the better one: the mode tolerance lumps starts that are not alike, so the full pool
    stays the default. Starts from prior draws of the lens (no pre-fit) always use the full pool.

    Parameters
    ----------
    kernel
        The :class:`~blindlens.gibbs_kernel.BlindLensGibbs` kernel the chains will run.
    key
        PRNG key.
    num_chains
        Number of chains.
    tries_per_chain
        Trajectories per chain in the full pool (the most the adaptive pool runs).
    tolerance
        Chi^2 gap to the best try that counts as the same mode (default
        :func:`default_mode_tolerance`).
    pool
        ``"full"`` or ``"adaptive"`` (default: ``kernel.warm_start_pool``, else ``"full"``).
    """
    tries = kernel.warm_start_tries if tries_per_chain is None else int(tries_per_chain)
    if tries < 1:
        raise ValueError(f"tries_per_chain must be >= 1, got {tries}.")
    pool = getattr(kernel, "warm_start_pool", "full") if pool is None else pool
    if pool not in WARM_START_POOLS:
        raise ValueError(f"pool must be one of {WARM_START_POOLS}, got {pool!r}.")
    jm = kernel.joint_model
    config = kernel.warm_start if kernel.warm_start is not None else GibbsDDRMConfig()
    num_tries = num_chains * tries
    prefit_note = ""
    prefit = getattr(kernel, "lens_prefit", None)
    keys = jr.split(key, num_tries)
    starts = None
    if prefit is not None:
        starts, prefit_note = prefit_starts(kernel, jr.fold_in(key, 7), num_tries, prefit)

    # compiled once per call, reused by every round; the model and prior are arguments, not constants
    @eqx.filter_jit
    def trajectories(model, prior, k, s):
        if s is None:
            return jax.lax.map(lambda kk: sample_gibbsddrm(kk, model, prior, config), k)
        return jax.lax.map(lambda a: sample_gibbsddrm(a[0], model, prior, config, a[1]), (k, s))

    @eqx.filter_jit
    def residual_chi2(model, lens, source):
        return jax.lax.map(lambda a: model.residual_chi2(lens_from_values(model.lens_model, a[0]), a[1]),
                           (lens, source))

    num_pixels = int(np.sum(np.asarray(jm.mask)))
    adaptive = pool == "adaptive" and starts is not None
    step = num_chains if adaptive else num_tries  # trajectories per round (one round for the full pool)
    rounds, fits = [], []
    for lo in range(0, num_tries, step):
        part = slice(lo, lo + step)
        part_starts = None if starts is None else jax.tree_util.tree_map(lambda v, part=part: v[part], starts)
        draws = trajectories(jm, kernel.prior, keys[part], part_starts)
        rounds.append(draws)
        fits.append(np.asarray(residual_chi2(jm, draws.lens, draws.source)))
        fit = np.concatenate(fits)
        finite = fit[np.isfinite(fit)]
        best_fit = float(finite.min()) if finite.size else float("inf")
        tol = default_mode_tolerance(num_pixels, best_fit) if tolerance is None else float(tolerance)
        if adaptive and dominant_mode_starts(fit, num_chains, tol)[1] >= num_chains:
            break
    draws = jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts), *rounds)
    chosen, num_dominant = dominant_mode_starts(fit, num_chains, tol)
    lens = {n: jnp.asarray(v)[chosen] for n, v in draws.lens.items()}
    lens, source, spread = spread_shared_placements(lens, jnp.asarray(draws.source)[chosen], chosen,
                                                    kernel.source_grid.pixel_scale)
    unconstrained = jax.vmap(lambda values: lens_unconstrained(jm.lens_model, values))(lens)
    init_params = {n: unconstrained[n] for n in kernel.lens_sites}
    init_params[SOURCE_SITE] = source
    ran = fit.size
    best = float(np.min(np.where(np.isfinite(fit), fit, np.inf))) / num_pixels
    worst = float(np.max(np.where(np.isfinite(fit), fit, -np.inf))) / num_pixels
    shown = ", ".join(f"{v:.3f}" for v in np.sort(fit)[:16] / num_pixels)
    grown = (f" (the pool grew {num_chains} at a time until every chain had its own start in the best mode; "
             f"at most {num_tries})" if adaptive else "")
    message = prefit_note + (
        f"chain starts: {num_dominant} of {ran} warm-start trajectories within chi^2 {tol:.0f} of the best{grown} "
        f"(chi^2/N {best:.4f}; worst try {worst:.4f}; tries: {shown}{', ...' if ran > 16 else ''})"
    )
    if num_dominant == 0:
        message += "; WARNING: no trajectory has a finite fit: the warm start diverged (more --warm-start-steps)"
    elif num_dominant < num_chains:
        message += (
            f"; WARNING: fewer than {num_chains} chains' worth, so chains share starts and R-hat is less able to "
            "reveal a missed mode (raise --warm-start-tries)"
        )
    if num_dominant > 0:
        message += gross_misfit_warning(best * num_pixels, num_pixels)
    if spread:
        message += (f"; {spread} chain(s) sharing a start moved to their own source grid placement, the source "
                    "carried along")
    return ChainStarts(init_params, jnp.asarray(fit), jnp.asarray(chosen), num_dominant, tol, num_pixels, message)


def prefit_starts(kernel: BlindLensGibbs, key: PRNGKeyArray, num_tries: int, config) -> tuple[dict, str]:
    """Starting lenses of ``num_tries`` warm-start trajectories from a Sérsic pre-fit.

    Runs :func:`~blindlens.parametric_prefit.prefit_lens_with_sersic` and hands out its runs in
    the best basin (chi^2 within :func:`default_mode_tolerance` of the best, at least one) in
    order of fit, cycling when there are fewer than ``num_tries``, and the next-best runs outside it
    when it holds fewer than half the tries (:func:`prefit_try_runs`). ``config`` is a
    :class:`~blindlens.parametric_prefit.SersicPrefitConfig` or a finished
    :class:`~blindlens.parametric_prefit.SersicPrefitResult` (used as it is). Returns ``(lens
    values with a leading tries axis, a report line)``.
    """
    from .parametric_prefit import SersicPrefitResult, prefit_lens_with_sersic

    if isinstance(config, SersicPrefitResult):  # already run (it placed the source grid)
        found = config
    else:
        found = prefit_lens_with_sersic(key, kernel.joint_model.lens_model, kernel.observation, config)
    chi2 = np.asarray(found.chi2)
    n = found.num_pixels
    pick, dominant = prefit_try_runs(chi2, num_tries, default_mode_tolerance(n, float(chi2[0])))
    outside = int(np.sum(pick >= dominant))
    starts = {name: jnp.asarray(v)[pick] for name, v in found.runs.items()}
    # the grid placement (fitted at 0 by the pre-fit): a prior draw per try, so that chains start at
    # different placements and the pooled chains average over more of them
    space = _LensSpace(kernel.joint_model.lens_model)
    nuisance = [n for n in nuisance_site_names(kernel.joint_model.lens_model) if n in starts]
    if nuisance:
        drawn = jax.vmap(space.prior_draw)(jr.split(jr.fold_in(key, 0x5417), num_tries))
        starts.update({n: jnp.asarray(drawn[n], starts[n].dtype) for n in nuisance})
    shown = ", ".join(f"{v:.2f}" for v in chi2[:8] / n)
    lens = ", ".join(f"{name} {float(v[0]):+.3f}" for name, v in found.runs.items())
    note = (f"lens pre-fit (Sérsic + shapelets, {chi2.size} starts): {dominant} in the best basin (chi^2/N "
            f"{shown}{', ...' if chi2.size > 8 else ''}); best lens {lens}"
            + (f"; {outside} of the {num_tries} warm-start tries start from the next-best runs outside it (the "
               "pixelated source ranks them)" if outside else "") + "\n")
    return starts, note


def prefit_try_runs(chi2, num_tries: int, tolerance: float) -> tuple[np.ndarray, int]:
    """Which pre-fit runs the ``num_tries`` warm-start trajectories start from.

    ``chi2`` is the pre-fit's runs' residual chi^2 in ascending order. The runs within ``tolerance``
    of the best (its basin, at least one) are handed out in order of fit, cycling. When that basin
    holds fewer runs than half the tries, the rest of that half goes to the next-best finite runs
    outside it, one try each: the pre-fit's Sérsic + shapelet source cannot draw a knotty source, so
    its lowest chi^2 can belong to a wrong lens (the bundled HST example: chi^2/N 96.1 with the mass
    centre 0.5" off against 105.8 near the truth, the two swapping with float rounding), and the
    warm start's pixelated source, which ranks the tries next, tells them apart. A basin of at least
    half the tries is used alone, as before.

    Returns
    -------
    (run index per try, the number of runs in the best basin)
    """
    chi2 = np.asarray(chi2, float)
    if num_tries < 1 or chi2.size < 1:
        raise ValueError(f"need num_tries >= 1 and at least one pre-fit run, got {num_tries} and {chi2.size}.")
    best = float(chi2[0])
    dominant = max(1, int(np.sum(chi2 <= best + tolerance)))
    finite_rest = int(np.sum(np.isfinite(chi2[dominant:])))
    outside = min(max(0, num_tries // 2 - dominant), finite_rest)
    inside = np.arange(num_tries - outside) % dominant
    return np.concatenate([inside, dominant + np.arange(outside)]).astype(int), dominant


def chain_chi2(kernel: BlindLensGibbs, z: dict) -> np.ndarray:
    """Residual chi^2 of each chain's current ``(lens, source)``.

    ``z`` is a Gibbs state's ``{site: value}`` with a leading chain axis (lens sites in NumPyro's
    unconstrained space, as in ``mcmc.post_warmup_state.z``).
    """
    jm = kernel.joint_model
    space = _LensSpace(jm.lens_model)
    def one(zc):
        values = {n: space.transforms[n](jnp.asarray(zc[n])) for n in space.names}
        return jm.residual_chi2(lens_from_values(jm.lens_model, values), zc[SOURCE_SITE])

    return np.asarray(jax.lax.map(one, {n: jnp.asarray(z[n]) for n in (*space.names, SOURCE_SITE)}))


def reset_worse_chains(kernel: BlindLensGibbs, state, *, tolerance: float | None = None):
    """Restart chains that sit in a worse mode than the best one from the best chain's state.

    Meant for the end of warm-up (the CLI calls it there): a chain whose residual chi^2 exceeds
    the best chain's by more than ``tolerance`` (default :func:`default_mode_tolerance`) gets the
    best chain's whole state (lens, source, adapted step size and metric) but keeps its own PRNG
    key, so it continues independently from the dominant mode instead of being averaged into the
    posterior from a wrong one.

    Parameters
    ----------
    kernel
        The kernel the chains run.
    state
        A :class:`~blindlens.gibbs_kernel.BlindLensGibbsState` with a leading chain axis.
    tolerance
        Chi^2 gap to the best chain that still counts as the same mode.

    Returns
    -------
    state, reset, message
        The new state, the indices of the restarted chains and a one-line report (empty when no
        chain was restarted).
    """
    chi2 = chain_chi2(kernel, state.z)
    num_pixels = int(np.sum(np.asarray(kernel.joint_model.mask)))
    fit = np.where(np.isfinite(chi2), chi2, np.inf)
    best = int(np.argmin(fit))
    tol = default_mode_tolerance(num_pixels, fit[best]) if tolerance is None else float(tolerance)
    reset = [int(c) for c in range(fit.size) if c != best and not fit[c] <= fit[best] + tol]
    if not reset or not np.isfinite(fit[best]):
        return state, [], ""
    index = np.arange(fit.size)
    index[reset] = best

    def take(path, leaf):
        if any(getattr(p, "name", None) == "rng_key" for p in path) or np.ndim(leaf) == 0:
            return leaf
        return leaf[index]

    new_state = jax.tree_util.tree_map_with_path(take, state)
    per_n = ", ".join(f"chain {c} chi^2/N {chi2[c] / num_pixels:.4f}" for c in reset)
    message = (
        f"WARNING: after warm-up {per_n} sat in a worse mode than chain {best} (chi^2/N "
        f"{chi2[best] / num_pixels:.4f}; gap > {tol:.0f}): restarted from chain {best}'s state with its own key. "
        "Restarted chains share a start, so R-hat is less able to reveal a missed mode."
    )
    return new_state, reset, message
