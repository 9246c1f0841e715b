"""Many lenses of one image shape in one compiled program: :func:`sample_batch`.

Every lens's chains run the pure Gibbs core (:class:`~blindlens.gibbs_core.GibbsCore`): warm-up
sweeps (curvature metric and step size adapting, each chain its own), then sampling sweeps with
both frozen. The chains of one lens are vectorised with ``jax.vmap``; lenses are mapped with
``jax.lax.map(..., batch_size=B)``, so ``B`` lenses x chains run as one vectorised program at a
time and memory stays bounded by ``B``. The observations enter as stacked data (the
:class:`~blindlens.numpyro_model.JointModel` of each, stacked leaf by leaf), so one compilation
serves the whole batch and any later batch of the same shapes.

Lens ``i`` uses the key ``jax.random.fold_in(key, first_index + i)``: its draws do not depend on the
other lenses in the batch or on ``batch_size`` (up to floating-point reassociation of vectorised
arithmetic), so a lens run alone with the same key and index gives the same chains.

The lens move in batch mode is the core's fixed-length HMC transition (two leapfrog steps with
the curvature metric by default, see :mod:`blindlens.gibbs_core`), not NUTS: under ``vmap`` NUTS
would make every lane wait for the longest tree of any lens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Float, PRNGKeyArray
from ..prior.source_prior import AbstractSourcePrior
from .gibbs_core import GibbsCore, GibbsCoreState, SweepInfo
from .gibbsddrm import GibbsDDRMConfig
from .numpyro_model import JointModel

__all__ = ["BatchDraws", "stack_models", "sample_batch"]


class BatchDraws(NamedTuple):
    """Draws of a batch of lenses.

    Attributes
    ----------
    lens
        ``{site: (lens, chain, draw)}`` constrained lens parameters (arcsec, dimensionless).
    source
        ``(lens, chain, draw, sy, sx)`` source draws, or ``None`` when not kept.
    info
        :class:`~blindlens.inference.gibbs_core.SweepInfo` of every sampling sweep, leaves ``(lens, chain, draw)``.
    final
        :class:`~blindlens.inference.gibbs_core.GibbsCoreState` after the last sweep, leaves
        ``(lens, chain, ...)``; one chain continues with :func:`run_chain` (or ``core.sweep``) from
        its slice, metric and step size as adapted.
    """

    lens: dict[str, Float[Array, "lens chain draw"]]
    source: Float[Array, "lens chain draw sy sx"] | None
    info: SweepInfo
    final: GibbsCoreState


def stack_models(models: Sequence[JointModel]) -> JointModel:
    """The joint models of several observations stacked leaf by leaf (a leading ``lens`` axis).

    All must share the lens model, image shape, grids, PSF size and mask presence (what selects
    the compiled program); a mismatch is refused naming the first differing lens.
    """
    models = list(models)
    if not models:
        raise ValueError("sample_batch needs at least one observation.")
    for i, m in enumerate(models):
        if not isinstance(m, JointModel):
            raise ValueError(f"lens {i}: expected a JointModel (blindlens.numpyro_model.joint_model), got {type(m).__name__}.")
    arrays0, static0 = eqx.partition(models[0], eqx.is_array)
    shapes0 = [a.shape for a in jax.tree.leaves(arrays0)]
    parts = [arrays0]
    for i, m in enumerate(models[1:], start=1):
        arrays, static = eqx.partition(m, eqx.is_array)
        same = jax.tree.structure(arrays) == jax.tree.structure(arrays0) and static == static0
        if not same or [a.shape for a in jax.tree.leaves(arrays)] != shapes0:
            raise ValueError(
                f"lens {i} differs from lens 0 in image shape, grids, PSF size, mask or lens model "
                f"(image {tuple(m.image.shape)} vs {tuple(models[0].image.shape)}); a batch shares one compiled "
                "program: group the observations by these and run one batch per group."
            )
        parts.append(arrays)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    return eqx.combine(stacked, static0)


def run_chain(
    core: GibbsCore,
    key: PRNGKeyArray,
    model: JointModel,
    state: GibbsCoreState,
    num_warmup: int,
    num_samples: int,
    keep_source: bool = True,
):
    """Warm-up then sampling sweeps of one chain from ``state``: ``(lens draws, sources, infos, final state)``."""
    if int(num_warmup) != core.num_warmup:  # the metric window sits at the end of this run's warm-up
        core = dataclasses.replace(core, num_warmup=int(num_warmup))
    k_warm, k_sample = jr.split(key)

    def warm(descend):
        def one(st, k):
            return core.sweep(k, st, model, warmup=True, descend=descend)[0], None

        return one

    def sample(st, k):
        st, info = core.sweep(k, st, model, warmup=False, descend=False)
        return st, (core.lens_values(st.lens), st.source if keep_source else None, info)

    descent = min(core.descent_sweeps(num_warmup), num_warmup)  # the warm-up's first sweeps: the descent move
    keys = jr.split(k_warm, num_warmup)
    if descent > 0:
        state, _ = jax.lax.scan(warm(True), state, keys[:descent])
    if num_warmup > descent:
        state, _ = jax.lax.scan(warm(False), state, keys[descent:])
    state, (lens, sources, infos) = jax.lax.scan(sample, state, jr.split(k_sample, num_samples))
    return lens, sources, infos, state


_TRACES = {"batch": 0}  # trace counter (tests check that a second batch reuses the compilation)


@eqx.filter_jit
def _run_batch(core, prior, keys, stacked_arrays, static, starts, warm_start, tries, num_chains, num_warmup,
               num_samples, keep_source, batch_size):
    _TRACES["batch"] += 1

    def one_lens(args):
        key, arrays, start = args
        model = eqx.combine(arrays, static)

        def one_chain(k, lens_start):
            k_start, k_init, k_run = jr.split(k, 3)
            if lens_start is None:
                lens_values, source = core.warm_start(k_start, model, prior, warm_start, tries)
            else:
                lens_values, source = lens_start, None
            state = core.init(k_init, model, lens_values, source)
            return run_chain(core, k_run, model, state, num_warmup, num_samples, keep_source)

        return jax.vmap(one_chain)(jr.split(key, num_chains), start)

    return jax.lax.map(one_lens, (keys, stacked_arrays, starts), batch_size=batch_size)


def sample_batch(
    key: PRNGKeyArray,
    core: GibbsCore,
    models: Sequence[JointModel],
    *,
    num_warmup: int | None = None,
    num_samples: int = 100,
    num_chains: int = 2,
    starts: Mapping[str, Array] | None = None,
    prior: AbstractSourcePrior | None = None,
    warm_start: GibbsDDRMConfig = GibbsDDRMConfig(),
    warm_start_tries: int = 4,
    batch_size: int | None = None,
    keep_source: bool = True,
    first_index: int = 0,
) -> BatchDraws:
    """Run ``num_chains`` Gibbs chains on each of several lenses in one compiled program.

    Parameters
    ----------
    key
        PRNG key; lens ``i`` uses ``fold_in(key, i)``.
    core
        The sweep (:class:`~blindlens.gibbs_core.GibbsCore`, e.g. ``GibbsCore.default(...)``).
    models
        One :class:`~blindlens.numpyro_model.JointModel` per lens, all of one image shape
        (:func:`stack_models` says what must agree).
    num_warmup, num_samples
        Warm-up sweeps (metric and step size adapting; default ``core.num_warmup``) and kept sweeps.
    num_chains
        Chains per lens (vectorised).
    starts
        ``{site: (lens, chain)}`` constrained starting lens values; the source is then drawn
        given the lens. ``None``: each chain starts from the best of ``warm_start_tries``
        continuous-time draws (:meth:`~blindlens.gibbs_core.GibbsCore.warm_start`), which
        needs ``prior``.
    prior
        The source prior (for the warm start).
    warm_start, warm_start_tries
        Configuration and number of tries of the warm start.
    batch_size
        Lenses vectorised together (``jax.lax.map``'s ``batch_size``); ``None`` maps the
        lenses one at a time (chains still vectorised); the number of lenses vectorises all.
    keep_source
        Keep every source draw (``(lens, chain, draw, sy, sx)``; memory).
    first_index
        Index of the first lens in a larger catalogue: lens ``i`` of this call uses the key
        ``fold_in(key, first_index + i)``, so a catalogue cut into batches, or one lens rerun
        alone with its index, draws the same chains.

    Returns
    -------
    :class:`BatchDraws`.
    """
    num_warmup = core.num_warmup if num_warmup is None else int(num_warmup)
    if num_warmup < 0 or int(num_samples) < 1 or int(num_chains) < 1:
        raise ValueError(
            f"need num_warmup >= 0, num_samples >= 1 and num_chains >= 1; got {num_warmup}, {num_samples}, {num_chains}."
        )
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")
    stacked = stack_models(models)
    n = len(models)
    arrays, static = eqx.partition(stacked, eqx.is_array)
    if starts is None:
        if prior is None:
            raise ValueError("sample_batch without starts warm-starts every chain and needs the source prior: pass prior=.")
        start_tree = None
    else:
        missing = [s for s in core.space.names if s not in starts]
        if missing:
            raise ValueError(f"starts lacks the lens sites {missing}; give {{site: (lens, chain) array}} for every site.")
        start_tree = {s: jnp.asarray(starts[s]) for s in core.space.names}
        bad = {s: v.shape for s, v in start_tree.items() if v.shape != (n, num_chains)}
        if bad:
            raise ValueError(f"starts must have shape (lens, chain) = {(n, num_chains)}; got {bad}.")
    keys = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(n) + int(first_index))
    lens, sources, infos, final = _run_batch(
        core, prior, keys, arrays, static, start_tree, warm_start, int(warm_start_tries), int(num_chains),
        num_warmup, int(num_samples), bool(keep_source), None if batch_size is None else int(batch_size),
    )
    return BatchDraws(lens, sources, infos, final)
