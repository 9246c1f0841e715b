"""Blind joint inference of lens and source: the NumPyro Gibbs kernel.

:class:`BlindLensGibbs` samples the joint posterior ``p(theta, s | y)`` of lens parameters
``theta`` (a NumPyro lens model, :mod:`blindlens.numpyro_model`) and a pixelated source ``s``
with a score-based diffusion prior. It is a NumPyro MCMC kernel. Each sweep (1) moves the source
by a ``p(s | theta, y)``-invariant guided reverse-SDE move (by default a partial refresh: the
current source noised to ``sigma_r`` and denoised with prior score + likelihood score,
:mod:`blindlens.source_posterior`; or a full trajectory from ``t = 1``), then (2) moves the lens
with NumPyro's NUTS on ``p(theta | s, y)`` (:class:`~blindlens.lens_block.LensNUTS`: the dense
metric is the local curvature of that conditional, recomputed through warm-up and frozen after
it), whose potential energy and gradient are refreshed after the source moved. Every chain is
warm-started by the continuous-time GibbsDDRM sampler (:func:`~blindlens.gibbsddrm.sample_gibbsddrm`).
Use it with ``numpyro.infer.MCMC`` and ``arviz.from_numpyro``.

The parts live in their own modules and are re-exported here: the continuous-time sampler
(:mod:`blindlens.gibbsddrm`: :func:`~blindlens.gibbsddrm.sample_gibbsddrm`,
:class:`~blindlens.gibbsddrm.GibbsDDRMConfig`, :class:`~blindlens.gibbsddrm.GibbsDDRMResult`),
the lens block (:mod:`blindlens.lens_block`: :class:`~blindlens.lens_block.LensNUTS`) and the
source block with its source moves (:mod:`blindlens.source_moves`:
:class:`~blindlens.source_moves.SourceBlock`, :class:`~blindlens.source_moves.SourceBlockState`,
:func:`~blindlens.source_moves.auto_refresh_sigma`). This module holds the kernel and its state
(:class:`BlindLensGibbsState`).

Design: why :class:`numpyro.infer.Gibbs`
----------------------------------------
:class:`BlindLensGibbs` *is* a ``numpyro.infer.Gibbs`` (NumPyro >= 0.22) with two blocks,
``[(source block, ["source"]), (LensNUTS(joint_model), None)]``, rather than a kernel written on
``MCMCKernel`` from scratch, because ``Gibbs`` already provides exactly the delicate parts:
conditioning each block on the others through the model (``_gibbs_sites``), refreshing the
NUTS block's cached potential energy and gradient when the source changed
(``HMC.refresh``, under ``lax.cond``), keeping NUTS's warm-up adaptation (dual-averaging step
size, windowed mass matrix) across sweeps, init-time validation of the site partition, model
replay for deterministic sites, pickling and every ``chain_method`` except ``"vectorized"``
(``Gibbs`` rejects batched keys; ``jax.vmap`` works). The source block is a small
``MCMCKernel`` (``init``/``sample``/``refresh``/``get_constrain_fn``). Two things are added on
top: the state class exposes the NUTS block's statistics under NumPyro's plain names, so that
``arviz.from_numpyro`` renames them to ArviZ's vocabulary (``lp``, ``diverging``,
``acceptance_rate``, ``step_size``, ``n_steps``, ``tree_depth``; with a plain ``Gibbs`` they
arrive as ``block_states.1.*`` and are not renamed), and :meth:`BlindLensGibbs.init`
warm-starts each chain from a continuous-time joint draw.

Correctness of the Gibbs sweep rests on the source step drawing from ``p(s | theta, y)``; with
an exact Gaussian likelihood score and a Gaussian prior this holds up to the integrator error,
which the gold-standard test checks against NUTS on the analytic marginal
``p(theta | y)`` (``tests/test_gibbs_kernel.py``).

NumPyro is imported only by the modules docs/architecture.md lists for it (this one,
:mod:`blindlens.lens_block`, :mod:`blindlens.source_moves`, :mod:`blindlens.numpyro_model`, ...).

References
----------
Murata et al. 2023, "GibbsDDRM: A Partially Collapsed Gibbs Sampler for Solving Blind Inverse
Problems with Denoising Diffusion Restoration", ICML.
Barco et al. 2025, arXiv:2511.04792 (continuous-time variant with a score-based source prior).
Hoffman & Gelman 2014, JMLR 15, 1593 (NUTS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import jax.random as jr
from numpyro.infer import HMC
from numpyro.infer.gibbs import Gibbs, GibbsState, with_conditioning

from .._types import Array, PRNGKeyArray
from ..physics.grid import PixelGrid
from ..prior.source_prior import AbstractSourcePrior
from .gibbsddrm import GibbsDDRMConfig, GibbsDDRMResult, best_of_gibbsddrm, sample_gibbsddrm
from .lens_block import LensNUTS
from .lens_space import LensSpace as _LensSpace  # (its old name here)
from .lens_space import lens_unconstrained  # noqa: F401  (re-exported: part of this module's API)
from .numpyro_model import (
    SOURCE_SITE,
    is_default_init_strategy,
    joint_model,
    lens_from_values,
    lens_init_values,
    lens_site_names,
)
from .source_moves import (  # the private adapters are re-exported too (old pickles name them here)
    SourceBlock,
    SourceBlockState,
    SourceSampler,
    _default_source_config,
    _descent_move,
    _source_refresh_sampler,
    _source_step_sampler,
    _SourceRefreshSampler,  # noqa: F401
    _SourceStepSampler,  # noqa: F401
    _SplitGibbsMover,
    _staged,  # noqa: F401  (re-exported: scripts import it from here)
    auto_refresh_sigma,
)
from .source_shift_model import SOURCE_SHIFT_SITES, placement_period, wrap_placement

if TYPE_CHECKING:
    from .lens_initialization import EvidenceSearchConfig

__all__ = [
    "GibbsDDRMConfig",
    "GibbsDDRMResult",
    "sample_gibbsddrm",
    "LensNUTS",
    "SourceBlock",
    "SourceBlockState",
    "BlindLensGibbsState",
    "BlindLensGibbs",
    "auto_refresh_sigma",
    "lens_unconstrained",
    "WARM_START_POOLS",
]


WARM_START_POOLS = ("full", "adaptive")
"""How a pooled warm start is sized (:func:`blindlens.chain_starts.pooled_chain_starts`): ``full`` (the
default) runs ``warm_start_tries`` per chain; ``adaptive`` grows the pool one try per chain at a time
until every chain has its own start in the best mode (with pre-fit starts; faster, measured less robust)."""


_PLACEMENT_SALT = 0x9A1D
"""Folded into the Gibbs state's key for the placement move (the blocks draw from keys of their own)."""


_SOURCE_STATE_KEY = "_source_state"
"""Key of the source in :attr:`BlindLensGibbsState.sites` (renamed back to ``"source"`` on collection)."""


def _sites_postprocess(constrain, sites):
    """``BlindLensGibbs.postprocess_fn``: the collected view back to site names, then constrained."""
    z = {k: v for k, v in sites.items() if k != _SOURCE_STATE_KEY}
    z[SOURCE_SITE] = sites[_SOURCE_STATE_KEY]
    return constrain(z)


class BlindLensGibbsState(GibbsState):
    """:class:`numpyro.infer.gibbs.GibbsState` exposing the lens-NUTS block's statistics.

    ``potential_energy`` (``-log p(theta, y | s)`` in unconstrained space, ArviZ's ``lp`` with
    the sign flipped), ``diverging``, ``accept_prob``, ``mean_accept_prob``, ``num_steps``,
    ``adapt_state`` and ``i`` come from the NUTS block; ``num_score_evals`` from the source
    block. ``z`` is the usual ``{site: value}`` of the Gibbs state (lens sites unconstrained, the
    ``source``); :attr:`sites` is the kernel's ``sample_field`` (see :class:`BlindLensGibbs`).
    """

    __slots__ = ()

    @property
    def sites(self) -> dict:
        """``z`` with the source under a private key: the field ``numpyro.infer.MCMC`` collects.

        ``BlindLensGibbs.postprocess_fn`` maps it back, so ``mcmc.get_samples()`` has the lens
        sites and ``"source"`` as usual, while ``mcmc.print_summary()`` (which lists only the
        collected sites that are keys of this field, hiding deterministic sites) shows the lens
        parameters and not one row per source pixel.
        """
        z = {k: v for k, v in self.z.items() if k != SOURCE_SITE}
        z[_SOURCE_STATE_KEY] = self.z[SOURCE_SITE]
        return z

    @property
    def lens_state(self):
        return self.block_states[-1]

    potential_energy = property(lambda self: self.block_states[-1].potential_energy)
    energy = property(lambda self: self.block_states[-1].energy)  # Hamiltonian: ArviZ plot_energy / BFMI
    diverging = property(lambda self: self.block_states[-1].diverging)
    accept_prob = property(lambda self: self.block_states[-1].accept_prob)
    mean_accept_prob = property(lambda self: self.block_states[-1].mean_accept_prob)
    num_steps = property(lambda self: self.block_states[-1].num_steps)
    adapt_state = property(lambda self: self.block_states[-1].adapt_state)
    i = property(lambda self: self.block_states[-1].i)
    num_score_evals = property(lambda self: self.block_states[0].num_score_evals)


class BlindLensGibbs(Gibbs):
    """Blind lens + source inference as a NumPyro MCMC kernel (Gibbs: diffusion source step, NUTS lens).

    Usage::

        kernel = BlindLensGibbs(sie_shear, observation, prior=ScorePrior.default())
        mcmc = numpyro.infer.MCMC(kernel, num_warmup=300, num_samples=500, num_chains=4,
                                  chain_method="sequential")   # or "parallel", jax.vmap
        mcmc.run(jax.random.key(0))
        idata = arviz.from_numpyro(mcmc)        # or blindlens.to_inference_data(mcmc, observation)

    Posterior sites: the lens model's sites (``theta_E, e1, ...``) and ``source`` (dims
    ``source_y, source_x``). Sample statistics collected by default (ArviZ names in brackets):
    ``potential_energy`` (``lp``), ``energy``, ``diverging``, ``accept_prob`` (``acceptance_rate``),
    ``num_steps`` (``n_steps``, ``tree_depth``), ``adapt_state.step_size`` (``step_size``) and
    ``num_score_evals`` (cumulative score-network evaluations).

    NumPyro conventions: ``init_strategy`` (e.g. ``init_to_value(values={...})``) starts the
    lens; ``target_accept_prob``, ``max_tree_depth`` and ``dense_mass`` go to the lens NUTS block;
    the kernel and a finished ``MCMC`` pickle; ``mcmc.print_summary()`` lists the lens parameters
    only (the source is collected like a deterministic site, so
    ``print_summary(exclude_deterministic=False)`` adds its pixels). To drop the source draws
    from the collection (memory), pass ``extra_fields=("~sites.source",)`` to ``mcmc.run``.

    Each MCMC iteration is one Gibbs sweep: a guided reverse-SDE move of the source given the
    current lens (a partial refresh by default, see ``source_refresh_sigma``), then one NUTS
    transition of the lens given the source (:class:`LensNUTS`; potential refreshed after the
    source moved; during ``num_warmup`` its metric follows the local curvature and its step size
    adapts, both frozen afterwards).
    See the module docstring for why this subclasses ``numpyro.infer.Gibbs``.

    Parameters
    ----------
    lens_model
        NumPyro lens model returning a lens (e.g. :func:`blindlens.numpyro_model.sie_shear`).
    observation
        :class:`blindlens.observation.Observation`.
    prior
        Source prior (:class:`blindlens.source_prior.AbstractSourcePrior`).
    source_config
        :class:`blindlens.source_posterior.SourceSamplerConfig` of the source step (default:
        PiGDM guidance, 50 Euler steps, final denoise).
    source_sampler
        Overrides the source step entirely: ``sampler(key, operator, data, noise_sigma) ->
        source`` (e.g. an exact Gaussian draw in tests); an attribute ``num_score_evals`` is
        counted per draw.
    warm_start
        :class:`GibbsDDRMConfig` of the continuous-time draw that initialises every chain whose
        ``init_params`` do not give the lens; ``None`` starts from a prior draw of the lens and a
        source draw given it.
    warm_start_tries
        Independent continuous-time trajectories per chain; the one with the smallest residual
        chi^2 starts the chain (:meth:`warm_start_draw`). Costs that many trajectories once per
        chain. In a pooled start (:func:`blindlens.chain_starts.pooled_chain_starts`) the most
        per chain.
    warm_start_pool
        ``"full"`` (default): a pooled start runs ``warm_start_tries`` per chain; ``"adaptive"``: from
        a lens pre-fit, one try per chain at a time until every chain has its own start in the best
        mode (fewer trajectories, measured less robust: :func:`blindlens.chain_starts.pooled_chain_starts`).
    source_grid
        Source-plane grid; default: the prior's shape and pixel scale, centred on (0, 0).
    supersampling, operator_factory
        Passed to :func:`blindlens.numpyro_model.joint_model`.
    lens_search
        Optional :class:`~blindlens.lens_initialization.EvidenceSearchConfig`: before the warm
        start, a multi-start search of the Gaussian-source evidence picks the starting lens
        (:func:`~blindlens.lens_initialization.search_lens_by_evidence`). Exact and robust for
        Gaussian source priors. For the score prior the evidence is that of a squared-exponential
        stand-in, which can prefer unphysical lenses, so the runs are ranked instead by the
        residual chi^2 of one source-step draw at each run's lens (docs/joint_inference.md). Off
        by default (it costs ``num_starts x num_steps`` evidence gradients).
    lens_prefit
        Optional :class:`~blindlens.parametric_prefit.SersicPrefitConfig`: chains started from a
        ranked pool (:func:`blindlens.chain_starts.pooled_chain_starts`, what ``blindlens sample``
        does) start their warm-start trajectories from the best lenses of a multi-start Sérsic +
        shapelet pre-fit instead of prior draws (:mod:`blindlens.parametric_prefit`). A finished
        :class:`~blindlens.parametric_prefit.SersicPrefitResult` is used as it is (the pipeline
        runs the pre-fit first to centre the source grid on it).
    lens_kernel
        ``lens_kernel(joint_model) -> HMC/NUTS kernel`` for the lens block (default
        ``LensNUTS(model, target_accept_prob=0.8, max_tree_depth=8)``, NUTS with the curvature
        metric; ``NUTS(model, ...)`` gives NumPyro's identity-metric NUTS with windowed
        adaptation, which Gibbs warm-ups are usually too short for); keep
        ``find_heuristic_step_size=False``. An ``init_strategy`` given to that kernel (other than
        NumPyro's default ``init_to_uniform``) is used like the ``init_strategy`` argument.
    init_strategy
        A NumPyro init strategy for the lens (``init_to_value(values=...)``, ``init_to_median``,
        ...), applied to the lens model; chains then start there (no warm start, no lens search)
        with a source drawn given that lens, or the ``"source"`` of ``init_to_value``'s values.
        ``init_params`` given to ``mcmc.run`` take precedence. ``None`` (default): the warm start.
    target_accept_prob, max_tree_depth, dense_mass
        NUTS settings of the default lens block (:class:`LensNUTS`; defaults 0.8, 8 and ``True``:
        the full curvature metric, ``False`` its diagonal). Not with ``lens_kernel``.
    source_refresh_sigma
        A noise level ``sigma_r`` (image units): every sweep noises the current source to
        ``sigma_r`` and runs the guided reverse diffusion from there
        (:func:`blindlens.source_posterior.source_refresh`), an exact Gibbs move of the augmented
        posterior that costs only the steps below ``sigma_r`` and skips the high-noise steps where
        the guidance errs most; the first source is still a full draw. ``"auto"`` (default):
        :func:`auto_refresh_sigma`, three times the median noise sd (ignored with a custom
        ``source_sampler``). ``None``: a full reverse trajectory from ``t = 1`` every sweep.
        Measured (docs/joint_inference.md): the gold standard passes with it at 117 instead of
        150 score evaluations per effective sample; on the study systems a sweep costs 2-4x less
        at the same effective samples per sweep.
    split_gibbs
        A :class:`~blindlens.split_gibbs.SplitGibbsConfig`: every sweep moves the source by exact
        split-Gibbs moves (an exact Gaussian data step and an unguided denoise from a noise level
        set by the operator's spectrum, :func:`blindlens.split_gibbs.split_gibbs_move`) instead of
        the guided partial refresh; no guidance approximation, so the source conditional is exact
        for the prior at its noise floor. The first source is still a guided draw. Not with
        ``source_refresh_sigma`` set to a number or a custom ``source_sampler``. Measured on the
        gold standard (docs/source_posterior.md): the moves are local, so theta_E carries slow
        components the ESS does not see (four moves per sweep, 2 x 1000 sweeps: the mean is
        -2.5, +6.0 and -0.2 of its estimated MCSE off the exact value for three seeds) at ~450
        network passes per (nominal) effective sample against 117 for the refresh: keep the
        default refresh for joint runs.
    warmup_source_move
        ``"draw"`` (a fresh guided draw every sweep) or ``"refresh"`` (the guided partial refresh
        at :func:`auto_refresh_sigma`'s level): moves the source in the first
        ``warmup_source_fraction`` of the warm-up sweeps instead of the sweep's own move
        (``split_gibbs`` or the refresh), which takes over for the rest of warm-up and every kept
        draw. A fast descent from a poor warm start: split-Gibbs moves are exact but local and
        crawl from a start far from the posterior. ``None`` (default): the sweep's move
        throughout. With ``chain_method="vectorized"`` both moves are computed in every sweep.
    warmup_source_fraction
        Fraction of the warm-up moved by ``warmup_source_move`` (default 0.5).
    wrap_placement
        With a sampled grid placement (:func:`~blindlens.source_shift_model.with_source_shift` in the
        lens model) and an HMC/NUTS lens block: after every warm-up sweep but the last, a chain
        whose placement lies in an outer half of its ``U(-p, p)`` prior is moved one grid period
        over with its source rolled one pixel along, if that fits as well
        (:func:`~blindlens.source_shift_model.wrap_placement` with ``fold=True``), so that no chain
        stays pressed against an edge of the prior and sampling starts in the central period. Two
        likelihood evaluations per warm-up sweep; the kept draws are untouched. Default ``True``;
        ignored without a sampled placement.
    warmup_source_threshold
        ``None`` (default): every chain uses ``warmup_source_move``. A number ``k``: only chains
        whose start misfits, residual chi^2/N above ``1 + k sqrt(2/N)``, do; the others (a good
        warm start) skip its cost. ``blindlens sample`` uses 20.
    """

    _state_cls = BlindLensGibbsState

    def __init__(
        self,
        lens_model: Callable,
        observation,
        prior: AbstractSourcePrior,
        *,
        source_config=None,
        source_sampler: SourceSampler | None = None,
        warm_start: GibbsDDRMConfig | None = GibbsDDRMConfig(),
        warm_start_tries: int = 4,
        warm_start_pool: str = "full",
        source_grid: PixelGrid | None = None,
        supersampling: int = 1,
        operator_factory: Callable | None = None,
        lens_kernel: Callable | None = None,
        lens_search: EvidenceSearchConfig | None = None,
        lens_prefit=None,
        source_refresh_sigma: float | str | None = "auto",
        split_gibbs=None,
        warmup_source_move: str | None = None,
        warmup_source_fraction: float = 0.5,
        warmup_source_threshold: float | None = None,
        init_strategy: Callable | None = None,
        target_accept_prob: float | None = None,
        max_tree_depth: int | tuple[int, int] | None = None,
        dense_mass: bool | None = None,
        wrap_placement: bool = True,
    ):
        if not isinstance(prior, AbstractSourcePrior):
            raise ValueError(
                f"prior must be an AbstractSourcePrior (ScorePrior, GaussianSourcePrior, ...), got "
                f"{type(prior).__name__}."
            )
        if source_grid is None:
            source_grid = PixelGrid(tuple(prior.shape), float(prior.pixel_scale))
        if tuple(source_grid.shape) != tuple(prior.shape):
            raise ValueError(
                f"source_grid shape {source_grid.shape} differs from the prior's {prior.shape}."
            )
        self.observation = observation
        self.prior = prior
        self.source_grid = source_grid
        self.warm_start = warm_start
        if int(warm_start_tries) < 1:
            raise ValueError(f"warm_start_tries must be >= 1, got {warm_start_tries}.")
        self.warm_start_tries = int(warm_start_tries)
        if warm_start_pool not in WARM_START_POOLS:
            raise ValueError(f"warm_start_pool must be one of {WARM_START_POOLS}, got {warm_start_pool!r}.")
        self.warm_start_pool = warm_start_pool
        self.joint_model = joint_model(
            lens_model,
            observation,
            source_grid,
            supersampling=supersampling,
            operator_factory=operator_factory,
        )
        self.lens_sites = lens_site_names(lens_model)
        self.lens_search = lens_search
        self.lens_prefit = lens_prefit
        if lens_search is not None:
            self._search_model = self._evidence_search_model(
                lens_model, observation, source_grid, supersampling, operator_factory, lens_search
            )
        if split_gibbs is not None:
            if source_sampler is not None or not (source_refresh_sigma is None or source_refresh_sigma == "auto"):
                raise ValueError(
                    "split_gibbs replaces the guided partial refresh of the built-in source step; it cannot be "
                    "combined with source_refresh_sigma set to a number or with a custom source_sampler."
                )
            source_refresh_sigma = None
        if isinstance(source_refresh_sigma, str):
            if source_refresh_sigma != "auto":
                raise ValueError(f"source_refresh_sigma must be a number, 'auto' or None, got {source_refresh_sigma!r}.")
            source_refresh_sigma = None if source_sampler is not None else auto_refresh_sigma(self.joint_model, prior)
        refresher = None
        if source_sampler is None:
            config = _default_source_config() if source_config is None else source_config
            source_sampler = _source_step_sampler(prior, config)
            if source_refresh_sigma is not None:
                refresher = _source_refresh_sampler(prior, config, float(source_refresh_sigma))
            elif split_gibbs is not None:
                refresher = _SplitGibbsMover(prior, split_gibbs)
        elif source_refresh_sigma is not None:
            raise ValueError(
                "source_refresh_sigma refreshes the built-in guided source step; it cannot be combined with a "
                "custom source_sampler. Drop one of them."
            )
        self.source_refresh_sigma = source_refresh_sigma
        self.split_gibbs = split_gibbs
        config = _default_source_config() if source_config is None else source_config
        descent = _descent_move(warmup_source_move, prior, config, self.joint_model)
        if descent is not None and refresher is None:
            raise ValueError("warmup_source_move replaces the sweep's source move in warm-up; a run that draws "
                             "afresh every sweep has none to replace: leave warmup_source_move=None.")
        self.warmup_source_move = warmup_source_move
        self.source_block = SourceBlock(
            self.joint_model, source_sampler, refresher, descent, warmup_source_fraction, warmup_source_threshold
        )
        nuts = {"target_accept_prob": target_accept_prob, "max_tree_depth": max_tree_depth, "dense_mass": dense_mass}
        nuts = {k: v for k, v in nuts.items() if v is not None}
        if lens_kernel is None:
            lens_block = LensNUTS(self.joint_model, **{"target_accept_prob": 0.8, "max_tree_depth": 8, **nuts})
        else:
            if nuts:
                raise ValueError(
                    f"{sorted(nuts)} configure the default lens block; with lens_kernel give them to your kernel."
                )
            lens_block = lens_kernel(self.joint_model)
            block_init = getattr(lens_block, "_init_strategy", None)
            if block_init is not None and not is_default_init_strategy(block_init):
                if init_strategy is not None and init_strategy is not block_init:
                    raise ValueError("init_strategy is given both to BlindLensGibbs and to the lens_kernel; give one.")
                init_strategy = block_init
        if init_strategy is not None and not callable(init_strategy):
            raise ValueError(f"init_strategy must be a NumPyro init strategy (e.g. init_to_value(values=...)), "
                             f"got {init_strategy!r}.")
        if init_strategy is not None and lens_search is not None:
            raise ValueError("init_strategy sets the starting lens; it cannot be combined with lens_search.")
        self.init_strategy = init_strategy
        self.wrap_placement = bool(wrap_placement)
        period = placement_period(lens_model) if self.wrap_placement and isinstance(lens_block, HMC) else None
        if period is not None and abs(period - float(source_grid.pixel_scale)) > 1e-9 * period:
            raise ValueError(
                f"with_source_shift's pixel_scale {period:g} differs from the source grid's {source_grid.pixel_scale:g}; "
                "give it the grid's pixel scale, or pass wrap_placement=False."
            )
        self._placement_period = period
        self._placement_fold_sweeps = 0  # set by init: the warm-up's sweeps
        super().__init__([(self.source_block, [SOURCE_SITE]), (lens_block, None)])

    sample_field = "sites"

    def sample(self, state, model_args, model_kwargs):
        """One Gibbs sweep (source, then lens); in warm-up, then the placement fold where the placement is sampled."""
        state = super().sample(state, model_args, model_kwargs)
        if self._placement_period is None:
            return state
        # every warm-up sweep but the last, so that the metric frozen after warm-up is computed in the central period
        folding = state.block_states[-1].i < self._placement_fold_sweeps
        return jax.lax.cond(folding, lambda s: self._wrap_placement(s, model_args, model_kwargs), lambda s: s, state)

    def _wrap_placement(self, state, model_args, model_kwargs):
        """:func:`~blindlens.source_shift_model.wrap_placement` (``fold=True``) on the state, the lens block refreshed if it moved."""
        source_state, lens_state = state.block_states
        lens_kernel = self._kernels[-1]
        jm = self.joint_model
        space = _LensSpace(jm.lens_model)
        values = {n: space.transforms[n](lens_state.z[n]) for n in space.names}

        def log_likelihood(v, source):
            return jm.log_likelihood(lens_from_values(jm.lens_model, v), source)

        key = jr.fold_in(state.rng_key, _PLACEMENT_SALT)
        moved, source, accepted = wrap_placement(key, values, source_state.z[SOURCE_SITE], self._placement_period,
                                                 log_likelihood, fold=True)

        def apply(states):
            src, lens = states
            z = {**lens.z, **{n: space.transforms[n].inv(moved[n]).astype(lens.z[n].dtype) for n in SOURCE_SHIFT_SITES}}
            kwargs = with_conditioning(model_kwargs, {SOURCE_SITE: source})
            lens = lens_kernel.refresh(lens._replace(z=z), model_args, kwargs)
            return src._replace(z={SOURCE_SITE: source}), lens

        blocks = jax.lax.cond(jnp.any(accepted), apply, lambda states: states, (source_state, lens_state))
        return state._replace(z=self._merge_z(blocks), block_states=tuple(blocks))

    def postprocess_fn(self, model_args, model_kwargs):
        """Gibbs's postprocessing applied to the collected :attr:`BlindLensGibbsState.sites`."""
        return partial(_sites_postprocess, super().postprocess_fn(model_args, model_kwargs))

    @property
    def default_fields(self) -> tuple[str, ...]:
        return (
            "diverging",
            "potential_energy",
            "energy",
            "accept_prob",
            "num_steps",
            "adapt_state.step_size",
            "num_score_evals",
        )

    def _evidence_search_model(self, lens_model, observation, source_grid, supersampling, operator_factory, config):
        from ..prior.gaussian_prior import GaussianSourcePrior

        if isinstance(self.prior, GaussianSourcePrior):
            return self.joint_model
        if operator_factory is not None:
            raise ValueError(
                "lens_search builds its own coarse lensing operator and cannot use a custom "
                "operator_factory; pass lens_search=None or a GaussianSourcePrior."
            )
        p = config.source_pixels
        field = source_grid.shape[0] * source_grid.pixel_scale
        coarse = PixelGrid((p, p), field / p, tuple(source_grid.center))
        return joint_model(lens_model, observation, coarse, supersampling=supersampling)

    def search_lens(self, key: PRNGKeyArray):
        """The multi-start evidence search of ``lens_search`` (see :mod:`blindlens.lens_initialization`)."""
        from ..prior.gaussian_prior import GaussianSourcePrior
        from .lens_initialization import (
            EvidenceSearchConfig,
            default_search_basis,
            search_lens_by_evidence,
        )

        config = self.lens_search if self.lens_search is not None else EvidenceSearchConfig()
        model = getattr(self, "_search_model", None) or self._evidence_search_model(
            self.joint_model.lens_model, self.observation, self.source_grid, 1, None, config
        )
        k_search, k_select = jr.split(key)
        basis = default_search_basis(self.prior, model, config)
        gaussian = isinstance(self.prior, GaussianSourcePrior)
        found = search_lens_by_evidence(k_search, model, basis, config, mean=self.prior.mean if gaussian else None)
        if gaussian or config.num_starts == 1:  # the evidence is exact: its best run is the answer
            return found
        # a Gaussian stand-in's evidence can favour unphysical lenses: rank the runs by the residual
        # chi^2 of one source draw from the kernel's own source step (the score prior) at each lens
        jm = self.joint_model

        def chi2_of_run(values, k):
            source = self.source_block.draw(k, values)
            return jm.residual_chi2(lens_from_values(jm.lens_model, values), source)

        chi2 = jax.lax.map(
            lambda a: chi2_of_run(a[0], a[1]), (found.runs, jr.split(k_select, config.num_starts))
        )
        best = jnp.argmin(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf))
        return found._replace(lens={n: v[best] for n, v in found.runs.items()})

    def warm_start_draw(self, key: PRNGKeyArray, init_lens: Mapping[str, Array] | None = None) -> GibbsDDRMResult:
        """The chain initialisation: the best of ``warm_start_tries`` continuous-time joint draws.

        Each try is one :func:`sample_gibbsddrm` trajectory from its own prior draw of the lens; the
        try whose ``(lens, source)`` has the smallest residual
        ``chi^2 = sum_unmasked ((y - A_theta s) / sigma)^2`` is returned. A trajectory that settled on
        a wrong lens with a co-adapted source fits the data visibly worse (the demo's wrong mode at
        ``theta_E`` 1.54 for a true 1.20 had ``chi^2 / N = 3.4``), so the selection discards such
        tries whenever one of them found the right basin.

        With ``init_lens`` (a lens-search result, or a user's guess) the first try starts there and
        the others still start from prior draws: trajectories from one far start all end at the same
        wrong, self-consistent lens (gold problem: 16 of 16 from ``theta_E`` 1.15, truth 0.80), so
        repeating it cannot rescue a bad guess, while the chi^2 selection keeps a good one.
        """
        config = self.warm_start if self.warm_start is not None else GibbsDDRMConfig()
        return best_of_gibbsddrm(key, self.joint_model, self.prior, config, self.warm_start_tries, init_lens)

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        self._placement_fold_sweeps = int(num_warmup)
        init_params = dict(init_params or {})
        given = [n for n in self.lens_sites if n in init_params]
        if given and len(given) != len(self.lens_sites):
            missing = [n for n in self.lens_sites if n not in init_params]
            raise ValueError(f"init_params gives some lens sites but not {missing}; give all or none.")
        rng_key, k_warm, k_src = jr.split(rng_key, 3)
        space = _LensSpace(self.joint_model.lens_model)
        if not given and self.init_strategy is not None:
            lens_values = lens_init_values(self.joint_model.lens_model, self.init_strategy, k_warm)
            u = space._unravel(space.unconstrain(lens_values))
            init_params.update({n: u[n] for n in self.lens_sites})
            source = None
            values = (getattr(self.init_strategy, "keywords", None) or {}).get("values") or {}
            if SOURCE_SITE in values and SOURCE_SITE not in init_params:  # init_to_value(values={"source": ...})
                init_params[SOURCE_SITE] = jnp.asarray(values[SOURCE_SITE])
        elif not given:
            found = None
            if self.lens_search is not None:  # (keys of runs without a search stay as they were)
                k_search, k_warm = jr.split(k_warm)
                found = self.search_lens(k_search).lens
            if self.warm_start is not None:
                draw = self.warm_start_draw(k_warm, init_lens=found)
                lens_values, source = draw.lens, draw.source
            else:
                lens_values = space.prior_draw(k_warm) if found is None else found
                source = None
            u = space._unravel(space.unconstrain(lens_values))
            init_params.update({n: u[n] for n in self.lens_sites})
        else:
            lens_values = {n: space.transforms[n](jnp.asarray(init_params[n])) for n in self.lens_sites}
            source = None
        if SOURCE_SITE not in init_params:
            if source is None:
                source = self.source_block.draw(k_src, lens_values)
            init_params[SOURCE_SITE] = source
        return super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
