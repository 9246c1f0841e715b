"""Blind joint inference of lens and source: the NumPyro kernel, a thin shell over the pure Gibbs core.

:class:`BlindLensGibbs` samples the joint posterior ``p(theta, s | y)`` of lens parameters
``theta`` (a NumPyro lens model, :mod:`blindlens.numpyro_model`) and a pixelated source ``s``
with a score-based diffusion prior, as a NumPyro MCMC kernel. Each MCMC iteration is one sweep of
:class:`~blindlens.gibbs_core.GibbsCore`: (1) a ``p(s | theta, y)``-invariant guided reverse-SDE
move of the source (by default a partial refresh: the current source noised to ``sigma_r`` and
denoised with prior score + likelihood score, :mod:`blindlens.source_posterior`; or a full
trajectory from ``t = 1``, or exact split-Gibbs moves), then (2) one NUTS transition of the lens on
``p(theta | s, y)`` with the curvature of that conditional as its metric (recomputed through
warm-up, averaged over its second half and frozen after it;
:func:`~blindlens.lens_block.nuts_transition`), and in warm-up (3) the placement fold where the
lens model samples the source grid's placement. Every chain is warm-started by the continuous-time GibbsDDRM sampler (:func:`~blindlens.gibbsddrm.sample_gibbsddrm`).
Use it with ``numpyro.infer.MCMC`` and ``arviz.from_numpyro``.

Design: a shell over the core
-----------------------------
The sweep is the core's pure ``sweep(key, state, model)``, where ``model`` (the
:class:`~blindlens.numpyro_model.JointModel`) holds the observation as array leaves; the same
function, compiled once, runs batches of lenses (:mod:`blindlens.lens_batch`). This module adds
only what NumPyro's ``MCMC`` needs: ``init`` (the chain starts: warm start, lens search, NumPyro
init strategies and ``init_params``), ``sample`` (one core sweep and a fresh key), a state
(:class:`BlindLensGibbsState`) that exposes the sweep's statistics under NumPyro's names, so that
``arviz.from_numpyro`` renames them to ArviZ's vocabulary (``lp``, ``diverging``,
``acceptance_rate``, ``step_size``, ``n_steps``, ``tree_depth``, ``energy``), and
``postprocess_fn`` (NumPyro's bijections back to the lens sites, deterministic sites replayed).
Until 2026-12 the kernel was a ``numpyro.infer.Gibbs`` of a source block and a NumPyro NUTS block
(:class:`~blindlens.lens_block.LensNUTS`, kept for custom Gibbs schemes); the move is the same
(curvature metric, Robbins-Monro step size, NumPyro's NUTS tree), its random numbers are not, and
``chain_method="vectorized"``, which ``Gibbs`` refused, now works.

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
Cabezas et al. 2024, arXiv:2402.10797 (BlackJAX: the init/step design of the core).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.flatten_util import ravel_pytree
from numpyro.infer.mcmc import MCMCKernel

from .._types import Array, PRNGKeyArray
from ..physics.grid import PixelGrid
from ..prior.source_prior import AbstractSourcePrior
from .gibbs_core import GibbsCore, GibbsCoreState, SweepInfo
from .gibbs_kernel_state import BlindLensGibbsState, batched_key, sites_postprocess
from .gibbsddrm import GibbsDDRMConfig, GibbsDDRMResult, best_of_gibbsddrm, sample_gibbsddrm
from .lens_block import LensNUTS
from .lens_space import lens_unconstrained  # noqa: F401  (re-exported: part of this module's API)
from .numpyro_model import (
    SOURCE_SITE,
    JointModel,
    joint_model,
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
from .source_shift_model import placement_period

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


class BlindLensGibbs(MCMCKernel):
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
    lens; ``target_accept_prob``, ``max_tree_depth`` and ``dense_mass`` set the lens NUTS move;
    the kernel and a finished ``MCMC`` pickle; ``mcmc.print_summary()`` lists the lens parameters
    only (the source is collected like a deterministic site, so
    ``print_summary(exclude_deterministic=False)`` adds its pixels). To drop the source draws
    from the collection (memory), pass ``extra_fields=("~sites.source",)`` to ``mcmc.run``.

    Each MCMC iteration is one Gibbs sweep: a guided reverse-SDE move of the source given the
    current lens (a partial refresh by default, see ``source_refresh_sigma``), then one NUTS
    transition of the lens given the source (its potential that of the moved source; during
    ``num_warmup`` its metric follows the curvature, averaged over the second half of warm-up,
    and its step size adapts, both frozen afterwards). The sweep is :attr:`core`'s
    (:class:`~blindlens.gibbs_core.GibbsCore`); see the module docstring.

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
    lens_move
        ``"nuts"`` (default): one NUTS transition per sweep with the curvature metric (as
        :class:`LensNUTS`); ``"hmc"``: fixed-length HMC of ``num_leapfrog`` steps with a jittered
        step size (the batch move of :class:`~blindlens.gibbs_core.GibbsCore`).
    num_leapfrog
        Leapfrog steps of ``lens_move="hmc"`` (default 2).
    lens_kernel
        Removed: the lens move is the core's (``lens_move``). Passing one is refused with that advice.
    init_strategy
        A NumPyro init strategy for the lens (``init_to_value(values=...)``, ``init_to_median``,
        ...), applied to the lens model; chains then start there (no warm start, no lens search)
        with a source drawn given that lens, or the ``"source"`` of ``init_to_value``'s values.
        ``init_params`` given to ``mcmc.run`` take precedence. ``None`` (default): the warm start.
    target_accept_prob, max_tree_depth, dense_mass
        Settings of the lens move (defaults 0.8, 8 and ``True``: the full curvature metric,
        ``False`` its diagonal); ``max_tree_depth`` may be a pair ``(warm-up, sampling)``.
    source_refresh_sigma
        A noise level ``sigma_r`` (image units): every sweep noises the current source to
        ``sigma_r`` and runs the guided reverse diffusion from there
        (:func:`blindlens.source_posterior.source_refresh`): only the steps below ``sigma_r``; the
        first source is still a full draw. ``"auto"`` (default): :func:`auto_refresh_sigma`, three
        times the median noise sd (ignored with a custom ``source_sampler``). ``None``: a full
        reverse trajectory from ``t = 1`` every sweep. Measured: docs/joint_inference.md.
    split_gibbs
        A :class:`~blindlens.split_gibbs.SplitGibbsConfig`: every sweep moves the source by exact
        split-Gibbs moves (an exact Gaussian data step and an unguided denoise from a noise level
        set by the operator's spectrum, :func:`blindlens.split_gibbs.split_gibbs_move`) instead of
        the guided partial refresh; no guidance approximation, so the source conditional is exact
        for the prior at its noise floor. The first source is still a guided draw. Not with
        ``source_refresh_sigma`` set to a number or a custom ``source_sampler``. Measured
        (docs/source_posterior.md): exact but local moves, costlier per effective sample on the
        gold standard than the refresh.
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
    warmup_source_exit
        ``None`` (default): a chain that uses ``warmup_source_move`` does so for all
        ``warmup_source_fraction`` of the warm-up. A number ``k``: it goes over to the sweep's move
        after the first sweep that ends within chi^2/N ``1 + k sqrt(2/N)``. ``blindlens sample``
        uses 5.
    """

    sample_field = "sites"

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
        lens_move: str = "nuts",
        num_leapfrog: int = 2,
        lens_kernel: Callable | None = None,
        lens_search: EvidenceSearchConfig | None = None,
        lens_prefit=None,
        source_refresh_sigma: float | str | None = "auto",
        split_gibbs=None,
        warmup_source_move: str | None = None,
        warmup_source_fraction: float = 0.5,
        warmup_source_threshold: float | None = None,
        warmup_source_exit: float | None = None,
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
        if lens_kernel is not None:
            raise ValueError(
                "lens_kernel was removed: BlindLensGibbs runs the pure core's lens move; choose it with "
                "lens_move='nuts' (default, curvature-metric NUTS) or 'hmc', and target_accept_prob, "
                "max_tree_depth, dense_mass."
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
        if warmup_source_threshold is not None and not float(warmup_source_threshold) >= 0.0:
            raise ValueError(f"warmup_source_threshold must be >= 0 or None, got {warmup_source_threshold}.")
        self.warmup_source_move = warmup_source_move
        if init_strategy is not None and not callable(init_strategy):
            raise ValueError(f"init_strategy must be a NumPyro init strategy (e.g. init_to_value(values=...)), "
                             f"got {init_strategy!r}.")
        if init_strategy is not None and lens_search is not None:
            raise ValueError("init_strategy sets the starting lens; it cannot be combined with lens_search.")
        self.init_strategy = init_strategy
        self.wrap_placement = bool(wrap_placement)
        period = placement_period(lens_model) if self.wrap_placement else None
        if period is not None and abs(period - float(source_grid.pixel_scale)) > 1e-9 * period:
            raise ValueError(
                f"with_source_shift's pixel_scale {period:g} differs from the source grid's {source_grid.pixel_scale:g}; "
                "give it the grid's pixel scale, or pass wrap_placement=False."
            )
        if dense_mass is not None and not isinstance(dense_mass, bool):
            raise ValueError(f"dense_mass must be True (the full curvature metric) or False (its diagonal), "
                             f"got {dense_mass!r}.")
        depth = 8 if max_tree_depth is None else max_tree_depth
        self.core = GibbsCore(
            lens_model,
            source_sampler,
            refresher,
            num_warmup=0,  # set by init
            num_leapfrog=int(num_leapfrog),
            target_accept_prob=0.8 if target_accept_prob is None else float(target_accept_prob),
            descent=descent,
            descent_fraction=float(warmup_source_fraction),
            descent_threshold=None if warmup_source_threshold is None else float(warmup_source_threshold),
            descent_exit=None if warmup_source_exit is None else float(warmup_source_exit),
            wrap_placement=self.wrap_placement,
            lens_move=lens_move,
            max_tree_depth=tuple(depth) if isinstance(depth, list) else depth,
            dense_metric=True if dense_mass is None else dense_mass,
        )

    # ---- what NumPyro's MCMC calls -----------------------------------------------------------
    @property
    def model(self):
        return self.joint_model

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        """A chain's first state (the warm start unless ``init_params`` or ``init_strategy`` give the lens).

        With ``chain_method="vectorized"`` NumPyro passes one key per chain (and ``init_params``
        batched alike): the chains' starts are then made under ``jax.vmap``.
        """
        self.core = dataclasses.replace(self.core, num_warmup=int(num_warmup))
        if batched_key(rng_key):
            return jax.vmap(lambda k, p: self._init_chain(k, p, model_kwargs))(rng_key, init_params or {})
        return self._init_chain(rng_key, init_params, model_kwargs)

    def _init_chain(self, rng_key, init_params, model_kwargs):
        init_params = dict(init_params or {})
        given = [n for n in self.lens_sites if n in init_params]
        if given and len(given) != len(self.lens_sites):
            missing = [n for n in self.lens_sites if n not in init_params]
            raise ValueError(f"init_params gives some lens sites but not {missing}; give all or none.")
        model = self._model(model_kwargs)
        rng_key, k_warm, k_src = jr.split(rng_key, 3)
        space = self.core.space
        source = init_params.get(SOURCE_SITE)
        if given:
            lens_values = {n: space.transforms[n](jnp.asarray(init_params[n])) for n in self.lens_sites}
        elif self.init_strategy is not None:
            lens_values = lens_init_values(self.joint_model.lens_model, self.init_strategy, k_warm)
            values = (getattr(self.init_strategy, "keywords", None) or {}).get("values") or {}
            if SOURCE_SITE in values and source is None:  # init_to_value(values={"source": ...})
                source = values[SOURCE_SITE]
        else:
            found = None
            if self.lens_search is not None:  # (keys of runs without a search stay as they were)
                k_search, k_warm = jr.split(k_warm)
                found = self.search_lens(k_search).lens
            if self.warm_start is not None:
                draw = self.warm_start_draw(k_warm, init_lens=found, model=model)
                lens_values, source = draw.lens, draw.source
            else:
                lens_values = space.prior_draw(k_warm) if found is None else found
        core = self.core.init(k_src, model, lens_values, None if source is None else jnp.asarray(source))
        if given:  # keep the given coordinates exactly (no constrain/unconstrain round trip)
            exact, _ = ravel_pytree({n: jnp.asarray(init_params[n], core.lens.dtype) for n in space.names})
            core = core._replace(lens=exact)
        info = self._first_info(core, model)
        return BlindLensGibbsState(self._z(core), core, info, rng_key)

    def sample(self, state, model_args, model_kwargs):
        """One Gibbs sweep of the core (source, then lens; in warm-up the placement fold)."""
        if batched_key(state.rng_key):  # chain_method="vectorized": one state per chain
            return jax.vmap(lambda st: self.sample(st, model_args, model_kwargs))(state)
        rng_key, key = jr.split(state.rng_key)
        core, info = self.core.sweep(key, state.core, self._model(model_kwargs))
        return BlindLensGibbsState(self._z(core), core, info, rng_key)

    def postprocess_fn(self, model_args, model_kwargs):
        """The collected :attr:`BlindLensGibbsState.sites` back to constrained site values."""
        return partial(sites_postprocess, self._model(model_kwargs))

    def _model(self, model_kwargs) -> JointModel:
        """The observation as data: ``mcmc.run(key, joint_model=...)``'s model, else the kernel's own.

        A :class:`~blindlens.numpyro_model.JointModel` passed this way (``joint_model(lens_model,
        other_observation, kernel.source_grid, ...)``) must match the kernel's in lens model, image
        shape, grids and PSF size; with ``MCMC(..., jit_model_args=True)`` one compiled sweep then
        serves every such observation. The warm start uses it too; a lens search, the lens pre-fit
        and pooled chain starts (:mod:`blindlens.chain_starts`) use the kernel's own observation.
        """
        given = (model_kwargs or {}).get("joint_model")
        if given is None:
            return self.joint_model
        if not isinstance(given, JointModel):
            raise ValueError(f"joint_model must be a blindlens JointModel (numpyro_model.joint_model), got "
                             f"{type(given).__name__}.")
        ours, theirs = eqx.partition(self.joint_model, eqx.is_array), eqx.partition(given, eqx.is_array)
        same = (jax.tree.structure(ours[0]) == jax.tree.structure(theirs[0]) and ours[1] == theirs[1]
                and [a.shape for a in jax.tree.leaves(ours[0])] == [a.shape for a in jax.tree.leaves(theirs[0])])
        if not same:
            raise ValueError(
                f"joint_model differs from the kernel's in lens model, image shape, grids, PSF size or mask (image "
                f"{tuple(given.image.shape)} vs {tuple(self.joint_model.image.shape)}); build a kernel for it instead."
            )
        return given

    def get_diagnostics_str(self, state) -> str:
        return (f"{int(state.num_steps)} steps of size {float(state.adapt_state.step_size):.2e}. "
                f"acc. prob={float(state.accept_prob):.2f}")

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

    # ---- helpers -----------------------------------------------------------------------------
    def _z(self, core: GibbsCoreState) -> dict:
        """NumPyro's ``{site: value}`` of a core state (lens sites unconstrained)."""
        z = dict(self.core.space._unravel(core.lens))
        z[SOURCE_SITE] = core.source
        return z

    def _first_info(self, core: GibbsCoreState, jm: JointModel) -> SweepInfo:
        """The statistics of a state no sweep has made yet (zero steps, the start's potential)."""
        pe = self.core.potential(core.lens, core.source, jm)
        zero = jnp.zeros((), pe.dtype)
        return SweepInfo(
            accept_prob=zero,
            diverging=jnp.asarray(False),
            potential_energy=pe,
            step_size=jnp.exp(core.log_step_size),
            num_steps=jnp.zeros((), jnp.int32),
            chi2=jm.residual_chi2(self.core.lens_of(core.lens), core.source),
            num_score_evals=core.num_score_evals,
            energy=pe,
        )

    def draw_source(self, key: PRNGKeyArray, lens_values: Mapping[str, Array]) -> Array:
        """A source draw of the kernel's source step given constrained ``lens_values``."""
        op, data, noise = self.core._source_inputs(self.core.space.unconstrain(lens_values), self.joint_model)
        return self.core.source_draw(key, op, data, noise)

    def descent_sweeps(self, num_warmup: int) -> int:
        """Warm-up sweeps moved by ``warmup_source_move`` (0 without one)."""
        return self.core.descent_sweeps(num_warmup)

    def _evidence_search_model(self, lens_model, observation, source_grid, supersampling, operator_factory, config):
        from .lens_initialization import evidence_search_model

        return evidence_search_model(self.prior, self.joint_model, lens_model, observation, source_grid,
                                     supersampling, operator_factory, config)

    def search_lens(self, key: PRNGKeyArray):
        """The multi-start evidence search of ``lens_search`` (:func:`~blindlens.lens_initialization.search_kernel_lens`)."""
        from .lens_initialization import search_kernel_lens

        return search_kernel_lens(self, key)

    def warm_start_draw(self, key: PRNGKeyArray, init_lens: Mapping[str, Array] | None = None,
                        model: JointModel | None = None) -> GibbsDDRMResult:
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
        ``model``: another observation's joint model of the same shape (default: the kernel's).
        """
        config = self.warm_start if self.warm_start is not None else GibbsDDRMConfig()
        jm = self.joint_model if model is None else model
        return best_of_gibbsddrm(key, jm, self.prior, config, self.warm_start_tries, init_lens)
