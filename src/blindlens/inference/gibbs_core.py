"""The pure Gibbs core: ``init`` and ``sweep`` over a NamedTuple state, the observation as data.

One sweep of the blind-lensing Gibbs sampler as pure functions in the style of BlackJAX::

    core = GibbsCore.default(lens_model, prior, num_warmup=100)
    state = core.init(key, model, lens_values)              # model: a JointModel (the observation)
    state, info = core.sweep(key, state, model)             # one source move + one lens move

``model`` is the :class:`~blindlens.numpyro_model.JointModel` of one observation. Its image, noise,
mask and PSF are array leaves (:func:`blindlens.numpyro_model.joint_model`), never constants
captured at trace time, so ``eqx.filter_jit(core.sweep)`` compiles once and serves every
observation with the same image shape, grids and PSF size, and ``jax.vmap`` over stacked models
runs a batch of lenses in one program (:mod:`blindlens.lens_batch`).

Each sweep (1) moves the source by a ``p(s | theta, y)``-invariant move (by default the guided
partial refresh, :func:`blindlens.source_posterior.source_refresh`, as in
:class:`~blindlens.gibbs_kernel.BlindLensGibbs`), then (2) moves the lens by one Hamiltonian Monte
Carlo transition on ``p(theta | s, y)`` in NumPyro's unconstrained lens coordinates
(:class:`~blindlens.lens_space.LensSpace`); where the lens model samples the source grid's placement,
(3) in warm-up the placement is folded into the central period of its prior
(:func:`~blindlens.source_shift_model.wrap_placement`). The lens move is the default lens block's
(:class:`~blindlens.lens_block.LensNUTS`) with one change for batches:

* the metric is the same SoftAbs curvature ``M^{-1} = |H|^{-1}`` of the conditional, recomputed at
  every warm-up sweep; in the last ``metric_window`` of warm-up it is the inverse of the mean
  curvature of that window's sweeps, frozen after warm-up; the step size starts at ``0.9`` and follows the
  same Robbins-Monro update towards ``target_accept_prob`` during warm-up;
* the trajectory has a **fixed** number of leapfrog steps (``num_leapfrog``, default 2, with the
  step size jittered uniformly by +-20% per transition so that no trajectory length resonates)
  instead of NUTS's tree doubling. Under ``jax.vmap`` NUTS waits for the longest tree among all
  lenses and chains; a fixed length costs the same in every lane. With the curvature metric the
  conditional is close to a unit Gaussian, where two steps of the adapted size (about 1.4) travel
  about half a period: successive draws are anti-correlated. Measured on the gold-standard problem
  (``benchmarks/lens_batch.py``, docs/performance.md "Batches of lenses"): theta_E ESS per sweep
  1.05-1.11 with 2 steps, 0.32-0.37 with 3, 0.43-0.57 with 5, against 0.29-0.31 for the NumPyro
  kernel's NUTS (1.9-2.1 leapfrog steps per transition); on the demo's observation with the
  shipped network prior the lens-source coupling sets the mixing and the moves tie (min lens ESS
  per sweep 0.19 for NUTS, 0.19 with 2 steps, 0.26 with 3; one seed). The move is an exact
  Metropolis-corrected HMC transition, reversible with respect to ``p(theta | s, y)`` once the
  metric and step size are frozen (Neal 2011).

References
----------
Neal 2011, "MCMC using Hamiltonian dynamics", Handbook of MCMC, ch. 5.
Betancourt 2013, arXiv:1212.4693 (SoftAbs metric).
Andrieu & Thoms 2008, Stat. Comput. 18, 343 (Robbins-Monro step-size adaptation).
Cabezas et al. 2024, arXiv:2402.10797 (BlackJAX: the init/step design).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Bool, Float, Int, PRNGKeyArray, SourceImage
from ..prior.source_prior import AbstractSourcePrior
from .gibbsddrm import GibbsDDRMConfig, _metric, best_of_gibbsddrm
from .lens_block import nuts_transition
from .lens_space import LensSpace
from .numpyro_model import JointModel, lens_from_values, lens_site_names
from .source_moves import _staged, chi2_misfits, counted_move, misfits  # _staged: the noise map as a traced value
from .source_shift_model import placement_period, wrap_placement

__all__ = ["GibbsCore", "GibbsCoreState", "SweepInfo", "LENS_MOVES"]

LENS_MOVES = ("hmc", "nuts")
"""The core's lens moves: fixed-length HMC (batches) and NUTS (the NumPyro kernel's)."""

_PLACEMENT_SALT = 0x9A1D
"""Folded into a sweep's key for the placement move (the source and lens moves' keys are unchanged)."""


class GibbsCoreState(NamedTuple):
    """State of one chain of the pure Gibbs core.

    Attributes
    ----------
    lens
        Unconstrained lens coordinates ``u``, flat ``(d,)`` in :class:`LensSpace` order.
    source
        Current source ``(sy, sx)`` (surface brightness, image units).
    log_step_size
        ``log`` of the leapfrog step size (in units of the metric).
    inverse_mass
        ``M^{-1}``, ``(d, d)``: the curvature metric in use (recomputed in warm-up, then frozen).
    iteration
        Sweeps done so far (warm-up counts).
    num_score_evals
        Cumulative prior-score (network) evaluations of the source moves.
    descends
        Whether this chain's next warm-up sweep uses the core's ``descent`` move (``True``
        unless a ``descent_threshold`` found its start fitting well, or a ``descent_exit`` its
        last sweep).
    mass
        Mean SoftAbs curvature ``|H|`` over the warm-up sweeps of the metric window so far
        (zeros before it): the metric frozen for sampling is its inverse.
    """

    lens: Float[Array, " d"]
    source: SourceImage
    log_step_size: Float[Array, ""]
    inverse_mass: Float[Array, "d d"]
    iteration: Int[Array, ""]
    num_score_evals: Int[Array, ""]
    descends: Bool[Array, ""]
    mass: Float[Array, "d d"]


class SweepInfo(NamedTuple):
    """What one sweep did (NumPyro's names where NumPyro has one, so ArviZ renames them).

    ``accept_prob`` (HMC acceptance probability), ``diverging`` (energy error > 1000 or
    non-finite), ``potential_energy`` (``-log p(theta, y | s)`` in unconstrained space after the
    move), ``step_size``, ``num_steps`` (leapfrog steps), ``chi2`` (residual
    ``sum ((y - A s - light) / sigma)^2`` over unmasked pixels after the sweep),
    ``num_score_evals`` (cumulative) and ``energy`` (the Hamiltonian of the lens move's
    outcome: ArviZ's ``energy``, for BFMI).
    """

    accept_prob: Float[Array, ""]
    diverging: Array
    potential_energy: Float[Array, ""]
    step_size: Float[Array, ""]
    num_steps: Int[Array, ""]
    chi2: Float[Array, ""]
    num_score_evals: Int[Array, ""]
    energy: Float[Array, ""]


class GibbsCore(eqx.Module):
    """The sweep of the blind-lensing Gibbs sampler as pure ``init``/``sweep`` functions.

    Parameters
    ----------
    lens_model
        NumPyro lens model (e.g. :func:`blindlens.numpyro_model.sie_shear`).
    source_draw
        ``sampler(key, operator, data, noise_sigma) -> source``: a fresh source draw given the
        lens (used when a chain starts without a source).
    source_move
        ``refresher(key, operator, data, noise_sigma, current) -> source``, a move leaving
        ``p(s | theta, y)`` invariant, or ``None`` to draw afresh every sweep. Each may carry
        ``num_score_evals`` (network passes per call), which the state counts; a move whose cost
        is known only at run time has ``move_and_count(...) -> (source, passes)`` instead
        (:func:`~blindlens.source_moves.counted_move`).
    num_warmup
        Sweeps during which the metric follows the curvature and the step size adapts.
    metric_window
        Fraction of the warm-up, at its end, over which the metric is the inverse of the **mean**
        curvature ``|H|`` of the sweeps so far in the window (then frozen for sampling); before
        the window each sweep uses the local ``|H|`` of its own position and source. ``0``: the
        local curvature of every warm-up sweep, the last one frozen. A metric frozen from one
        position fails where the curvature in unconstrained coordinates changes along the
        posterior (a bounded amplitude far from its mean): measured on the lens-light gold problem,
        one chain in four froze a metric 5-8x too wide and sampled at acceptance 0.1-0.2.
    num_leapfrog
        Leapfrog steps per lens transition.
    target_accept_prob
        Target of the step-size adaptation.
    step_size
        Initial step size (metric units).
    step_jitter
        Relative half-width of the uniform step-size jitter per transition.
    metric_floor
        Floor of the SoftAbs metric's absolute eigenvalues.
    descent
        Optional ``refresher``-form move (or ``"draw"``: ``source_draw`` afresh) that moves the
        source instead of ``source_move`` in the first ``descent_fraction`` of the warm-up sweeps:
        a fast descent from a poor start, discarded with the warm-up
        (:class:`~blindlens.source_moves.SourceBlock`'s ``descent``).
    descent_fraction
        Fraction of the warm-up sweeps moved by ``descent``.
    lens_transitions
        HMC transitions of the lens per sweep (each with its own momentum and jitter; the step
        size adapts to their mean acceptance). They cost no network pass.
    wrap_placement
        With a sampled grid placement (:func:`~blindlens.source_shift_model.with_source_shift` in
        ``lens_model``): end every warm-up sweep but the last by folding the placement into the
        central period of its prior (:func:`~blindlens.source_shift_model.wrap_placement` with
        ``fold=True``), as :class:`~blindlens.gibbs_kernel.BlindLensGibbs` does. Ignored without one.
    lens_move
        ``"hmc"`` (default): ``num_leapfrog`` steps per transition with a jittered step size (the
        batch move above); ``"nuts"``: a NUTS transition with the same metric and step-size
        adaptation (:func:`~blindlens.lens_block.nuts_transition`, no jitter): the move of
        :class:`~blindlens.gibbs_kernel.BlindLensGibbs`, whose trajectories vary in length.
    max_tree_depth
        Largest NUTS tree depth (``lens_move="nuts"``); a pair ``(warm-up, sampling)`` sets each
        phase's own.
    dense_metric
        ``True`` (default): the full curvature metric; ``False``: its diagonal (the conditional's
        marginal variances).
    descent_threshold
        ``None`` (default): every chain descends (``descent``). A number ``k``: only a chain whose
        start misfits, residual chi^2/N above ``1 + k sqrt(2/N)`` (``N`` unmasked pixels), does; a
        chain started at a good fit skips the descent's cost.
    descent_exit
        ``None`` (default): a descending chain descends for all of its descent sweeps. A number
        ``k``: it stops after the first sweep that ends with residual chi^2/N within
        ``1 + k sqrt(2/N)`` (``descends`` turns off) and goes on with ``source_move``, as a chain
        started at that fit would. ``blindlens sample`` uses 5 (the fit its residual check passes)
        with a ``descent_threshold`` of 20: a stricter bound to stop at than to start at, since
        the crawl of split Gibbs from a fit just inside the start's bound is what the descent
        exists to spare (broad system 30: stopping at 20 left the chains at chi^2/N 1.13-1.16,
        descending on to 1.09-1.10; docs/joint_inference.md).
    """

    lens_model: Callable = eqx.field(static=True)
    source_draw: Callable = eqx.field(static=True)
    source_move: Callable | None = eqx.field(static=True)
    num_warmup: int = eqx.field(static=True, default=100)
    metric_window: float = eqx.field(static=True, default=0.5)
    num_leapfrog: int = eqx.field(static=True, default=2)
    target_accept_prob: float = eqx.field(static=True, default=0.8)
    step_size: float = eqx.field(static=True, default=0.9)
    step_jitter: float = eqx.field(static=True, default=0.2)
    metric_floor: float = eqx.field(static=True, default=1e-2)
    descent: Callable | str | None = eqx.field(static=True, default=None)
    descent_fraction: float = eqx.field(static=True, default=0.5)
    space: LensSpace = eqx.field(static=True, default=None)
    lens_transitions: int = eqx.field(static=True, default=1)
    wrap_placement: bool = eqx.field(static=True, default=True)
    lens_move: str = eqx.field(static=True, default="hmc")
    max_tree_depth: int | tuple = eqx.field(static=True, default=8)
    dense_metric: bool = eqx.field(static=True, default=True)
    descent_threshold: float | None = eqx.field(static=True, default=None)
    descent_exit: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if int(self.num_warmup) < 0:
            raise ValueError(f"num_warmup must be >= 0, got {self.num_warmup}.")
        if int(self.num_leapfrog) < 1:
            raise ValueError(f"num_leapfrog must be >= 1, got {self.num_leapfrog}.")
        if not 0.0 < float(self.target_accept_prob) < 1.0:
            raise ValueError(f"target_accept_prob must lie in (0, 1), got {self.target_accept_prob}.")
        if not 0.0 <= float(self.step_jitter) < 1.0:
            raise ValueError(f"step_jitter must lie in [0, 1), got {self.step_jitter}.")
        if not float(self.step_size) > 0.0:
            raise ValueError(f"step_size must be positive, got {self.step_size}.")
        if int(self.lens_transitions) < 1:
            raise ValueError(f"lens_transitions must be >= 1, got {self.lens_transitions}.")
        if not 0.0 <= float(self.metric_window) <= 1.0:
            raise ValueError(f"metric_window must lie in [0, 1], got {self.metric_window}.")
        if not 0.0 <= float(self.descent_fraction) <= 1.0:
            raise ValueError(f"descent_fraction must lie in [0, 1], got {self.descent_fraction}.")
        if isinstance(self.descent, str) and self.descent != "draw":
            raise ValueError(f"descent must be a move, 'draw' or None, got {self.descent!r}.")
        if self.lens_move not in LENS_MOVES:
            raise ValueError(f"lens_move must be one of {LENS_MOVES}, got {self.lens_move!r}.")
        depths = self.max_tree_depth if isinstance(self.max_tree_depth, tuple) else (self.max_tree_depth,)
        if len(depths) not in (1, 2) or not all(isinstance(d, int) and d >= 1 for d in depths):
            raise ValueError(f"max_tree_depth must be an int >= 1 or a pair of them, got {self.max_tree_depth!r}.")
        if self.descent_threshold is not None and not float(self.descent_threshold) >= 0.0:
            raise ValueError(f"descent_threshold must be >= 0 or None, got {self.descent_threshold}.")
        if self.descent_exit is not None and not float(self.descent_exit) >= 0.0:
            raise ValueError(f"descent_exit must be >= 0 or None, got {self.descent_exit}.")
        if self.descent is not None and self.source_move is None:
            raise ValueError("descent replaces source_move in warm-up; a core that draws afresh every sweep has "
                             "none to replace: leave descent=None.")

    def __post_init__(self):
        if self.descent_threshold is not None:
            self.descent_threshold = float(self.descent_threshold)
        if self.descent_exit is not None:
            self.descent_exit = float(self.descent_exit)
        if self.space is None:
            lens_site_names(self.lens_model)  # clear errors for a bad lens model
            self.space = LensSpace(self.lens_model)

    @classmethod
    def default(
        cls,
        lens_model: Callable,
        prior: AbstractSourcePrior,
        model: JointModel | None = None,
        *,
        source_config=None,
        refresh_sigma: float | str | None = "auto",
        split_gibbs=None,
        warmup_source_move: str | None = None,
        **kwargs,
    ) -> GibbsCore:
        """The core with :class:`~blindlens.gibbs_kernel.BlindLensGibbs`'s default source step.

        PiGDM guidance with 50 steps (``source_config``); each sweep a partial refresh from
        ``refresh_sigma`` (``"auto"``: :func:`~blindlens.source_moves.auto_refresh_sigma` of
        ``model``, three times its median noise sd; ``None``: a full draw every sweep), or, with
        ``split_gibbs`` (a :class:`~blindlens.split_gibbs.SplitGibbsConfig`; ``refresh_sigma``
        then must stay ``"auto"``), the exact split-Gibbs move. ``warmup_source_move``
        (``"draw"``, ``"refresh"`` or ``None``) moves the source in the first half of warm-up
        instead (``descent``, as :class:`~blindlens.gibbs_kernel.BlindLensGibbs`'s argument of
        that name). ``kwargs`` go to :class:`GibbsCore`.
        """
        from .source_moves import (
            _default_source_config,
            _descent_move,
            _SplitGibbsMover,
            _source_refresh_sampler,
            _source_step_sampler,
            auto_refresh_sigma,
        )

        config = _default_source_config() if source_config is None else source_config
        descent = _descent_move(warmup_source_move, prior, config, model)
        if descent is not None:
            kwargs = {"descent": descent, **kwargs}
        if split_gibbs is not None:
            if refresh_sigma != "auto":
                raise ValueError("split_gibbs replaces the guided refresh: leave refresh_sigma at 'auto'.")
            return cls(lens_model, _source_step_sampler(prior, config), _SplitGibbsMover(prior, split_gibbs), **kwargs)
        if isinstance(refresh_sigma, str):
            if refresh_sigma != "auto":
                raise ValueError(f"refresh_sigma must be a number, 'auto' or None, got {refresh_sigma!r}.")
            if model is None:
                raise ValueError("refresh_sigma='auto' reads the noise level of a model: pass model= or a number.")
            refresh_sigma = auto_refresh_sigma(model, prior)
        move = None if refresh_sigma is None else _source_refresh_sampler(prior, config, float(refresh_sigma))
        return cls(lens_model, _source_step_sampler(prior, config), move, **kwargs)

    # ---- the lens conditional ----------------------------------------------------------------
    def potential(self, u: Float[Array, " d"], source: SourceImage, model: JointModel) -> Float[Array, ""]:
        """``-log p(theta(u), y | s)`` plus the log-Jacobian of NumPyro's bijections (unconstrained)."""
        lens, log_prior = self.space.log_prior_and_lens(u)
        return -(log_prior + model.log_likelihood(lens, source))

    def curvature_inverse_mass(self, u, source, model) -> Float[Array, "d d"]:
        """``|H|^{-1}`` of the potential at ``u`` (SoftAbs, eigenvalues floored at ``metric_floor``)."""
        return self._inverse(self.curvature_mass(u, source, model))

    def curvature_mass(self, u, source, model) -> Float[Array, "d d"]:
        """``|H|``, the SoftAbs curvature of the potential at ``u`` (eigenvalues floored at ``metric_floor``)."""
        vec, lam = _metric(jax.hessian(self.potential)(u, source, model), self.metric_floor)
        return (vec * lam) @ vec.T

    def _inverse(self, mass):
        """The metric NUTS/HMC uses from a curvature ``mass``: ``mass^{-1}`` (its diagonal with ``dense_metric=False``)."""
        lam, vec = jnp.linalg.eigh(0.5 * (mass + mass.T))
        inverse = (vec / lam) @ vec.T
        return inverse if self.dense_metric else jnp.diag(jnp.diag(inverse))

    def metric_window_start(self, num_warmup: int | None = None) -> int:
        """The first warm-up sweep whose metric is the window's mean curvature (:attr:`metric_window`)."""
        num_warmup = self.num_warmup if num_warmup is None else int(num_warmup)
        return num_warmup - round(float(self.metric_window) * num_warmup)

    def _warmup_metric(self, state, source, model):
        """This warm-up sweep's ``(inverse_mass, mass)``: the local curvature, or the window's running mean."""
        local = self.curvature_mass(state.lens, source, model)
        start = self.metric_window_start()
        n = (state.iteration - start + 1).astype(local.dtype)
        in_window = state.iteration >= start
        mass = jnp.where(in_window, state.mass + (local - state.mass) / jnp.maximum(n, 1.0), state.mass)
        return self._inverse(jnp.where(in_window, mass, local)), mass.astype(state.mass.dtype)

    def lens_of(self, u: Float[Array, " d"]):
        """The lens Module at unconstrained coordinates ``u``."""
        return self.space.log_prior_and_lens(u)[0]

    def lens_values(self, u: Float[Array, " d"]) -> dict[str, Array]:
        """Constrained lens-site values ``{name: value}`` at ``u``."""
        return self.space.constrain(u)

    def descent_sweeps(self, num_warmup: int | None = None) -> int:
        """Warm-up sweeps moved by ``descent`` (0 without one); ``num_warmup`` defaults to the core's."""
        num_warmup = self.num_warmup if num_warmup is None else int(num_warmup)
        return 0 if self.descent is None else round(float(self.descent_fraction) * num_warmup)

    def _descend_cost(self) -> int:
        move = self.source_draw if isinstance(self.descent, str) else self.descent
        return int(getattr(move, "num_score_evals", 0))

    def _descend(self, key, op, data, noise, current):
        if isinstance(self.descent, str):
            return self.source_draw(key, op, data, noise), self._descend_cost()
        return self.descent(key, op, data, noise, current), self._descend_cost()

    def _source_inputs(self, u, model):
        lens = self.lens_of(u)
        return model.operator(lens, masked=True), model.source_data(lens), _staged(model.noise)

    # ---- init / sweep ------------------------------------------------------------------------
    def init(
        self,
        key: PRNGKeyArray,
        model: JointModel,
        lens_values: Mapping[str, Array],
        source: SourceImage | None = None,
    ) -> GibbsCoreState:
        """A chain's state at constrained ``lens_values``; the source is drawn given the lens when not given."""
        u = self.space.unconstrain(lens_values)
        evals = jnp.zeros((), jnp.int32)
        if source is None:
            op, data, noise = self._source_inputs(u, model)
            source = self.source_draw(key, op, data, noise)
            evals = evals + int(getattr(self.source_draw, "num_score_evals", 0))
        source = jnp.asarray(source)
        return GibbsCoreState(
            lens=u,
            source=source,
            log_step_size=jnp.log(jnp.asarray(self.step_size, u.dtype)),
            inverse_mass=self.curvature_inverse_mass(u, source, model),
            iteration=jnp.zeros((), jnp.int32),
            num_score_evals=evals,
            descends=self.starts_poorly(u, source, model),
            mass=jnp.zeros((u.shape[0], u.shape[0]), u.dtype),
        )

    def starts_poorly(self, u: Float[Array, " d"], source: SourceImage, model: JointModel) -> Bool[Array, ""]:
        """Whether a chain at ``(u, source)`` misfits by more than ``descent_threshold`` (``True`` without one)."""
        if self.descent_threshold is None:
            return jnp.asarray(True)
        return misfits(model, self.lens_of(u), source, self.descent_threshold)

    def sweep(
        self,
        key: PRNGKeyArray,
        state: GibbsCoreState,
        model: JointModel,
        warmup: bool | None = None,
        descend: bool | None = None,
    ) -> tuple[GibbsCoreState, SweepInfo]:
        """One Gibbs sweep: the source move given the lens, then one HMC transition of the lens.

        ``warmup`` (static): ``True`` recomputes the metric and adapts the step size, ``False``
        keeps both; ``None`` (default) decides from ``state.iteration < num_warmup`` at run
        time. Batched runs pass it statically, so that ``vmap`` does not turn the choice into a
        select that computes the curvature every sweep. ``descend`` (static) likewise chooses the
        ``descent`` move over ``source_move``; ``None`` decides from ``state.iteration <``
        :meth:`descent_sweeps`.
        """
        k_src, k_lens = jr.split(key)
        op, data, noise = self._source_inputs(state.lens, model)
        if self.source_move is None:
            source = self.source_draw(k_src, op, data, noise)
            cost = int(getattr(self.source_draw, "num_score_evals", 0))
        elif self.descent is None or descend is False:
            source, cost = counted_move(self.source_move, k_src, op, data, noise, state.source)
        elif descend and self.descent_threshold is None and self.descent_exit is None:
            source, cost = self._descend(k_src, op, data, noise, state.source)
        else:
            descending = state.descends if descend else (state.iteration < self.descent_sweeps()) & state.descends

            def descend_move():
                source, cost = self._descend(k_src, op, data, noise, state.source)
                return source, jnp.asarray(cost, jnp.int32)

            source, cost = jax.lax.cond(
                descending,
                descend_move,
                lambda: counted_move(self.source_move, k_src, op, data, noise, state.source),
            )

        if warmup is None:
            warming = state.iteration < self.num_warmup
            inverse_mass, mass = jax.lax.cond(
                warming, lambda: self._warmup_metric(state, source, model), lambda: (state.inverse_mass, state.mass)
            )
        else:
            warming = jnp.asarray(bool(warmup))
            inverse_mass, mass = (self._warmup_metric(state, source, model) if warmup
                                  else (state.inverse_mass, state.mass))
        u, pe, accept, diverging, eps, steps, energy = self._lens_move(
            k_lens, state.lens, source, model, inverse_mass, state.log_step_size, warming
        )
        period = placement_period(self.lens_model) if self.wrap_placement and warmup is not False else None
        if period is not None:  # every warm-up sweep but the last (the metric then frozen is the central period's)
            folding = state.iteration + 1 < self.num_warmup
            u, source, pe = jax.lax.cond(
                folding,
                lambda: self._wrap_placement(jr.fold_in(key, _PLACEMENT_SALT), u, source, model, pe, period),
                lambda: (u, source, pe),
            )
        log_eps = state.log_step_size + (accept - self.target_accept_prob) / jnp.sqrt(state.iteration + 1.0)
        log_eps = jnp.clip(log_eps, jnp.log(1e-3), jnp.log(2.0))
        log_eps = jnp.where(warming, log_eps, state.log_step_size).astype(state.log_step_size.dtype)
        chi2 = model.residual_chi2(self.lens_of(u), source)
        descends = state.descends
        if self.descent is not None and self.descent_exit is not None and descend is not False:
            descends = descends & chi2_misfits(model, chi2, self.descent_exit)  # fits now: stop descending
        new = GibbsCoreState(u, source, log_eps, inverse_mass, state.iteration + 1, state.num_score_evals + cost,
                             descends, mass)
        info = SweepInfo(
            accept_prob=accept,
            diverging=diverging,
            potential_energy=pe,
            step_size=eps,
            num_steps=steps,
            chi2=chi2,
            num_score_evals=new.num_score_evals,
            energy=energy,
        )
        return new, info

    def _wrap_placement(self, key, u, source, model, pe, period):
        """:func:`~blindlens.source_shift_model.wrap_placement` (``fold=True``) at ``u``: the new ``(u, source, potential)``."""
        values = self.space.constrain(u)

        def log_likelihood(v, s):
            return model.log_likelihood(lens_from_values(self.lens_model, v), s)

        moved, source, accepted = wrap_placement(key, values, source, period, log_likelihood, fold=True)
        new_u = self.space.unconstrain(moved).astype(u.dtype)
        moved_any = jnp.any(accepted)
        pe = jnp.where(moved_any, self.potential(new_u, source, model), pe).astype(pe.dtype)
        return jnp.where(moved_any, new_u, u), source, pe

    def _lens_move(self, key, u, source, model, inverse_mass, log_step_size, warming):
        """``lens_transitions`` transitions: the last one's state, mean acceptance, any divergence, total steps."""
        move = self._nuts if self.lens_move == "nuts" else self._hmc
        if int(self.lens_transitions) == 1:
            return move(key, u, source, model, inverse_mass, log_step_size, warming)

        def one(u, k):
            u, *rest = move(k, u, source, model, inverse_mass, log_step_size, warming)
            return u, tuple(rest)

        u, (pe, accept, diverging, eps, steps, energy) = jax.lax.scan(
            one, u, jr.split(key, int(self.lens_transitions))
        )
        return u, pe[-1], jnp.mean(accept), jnp.any(diverging), eps[-1], jnp.sum(steps), energy[-1]

    def _nuts(self, key, u, source, model, inverse_mass, log_step_size, warming):
        """One NUTS transition of ``u`` (:func:`~blindlens.lens_block.nuts_transition`)."""
        depths = self.max_tree_depth if isinstance(self.max_tree_depth, tuple) else (self.max_tree_depth,) * 2
        current = jnp.where(warming, depths[0], depths[1]) if depths[0] != depths[1] else depths[0]
        eps = jnp.exp(log_step_size)
        t = nuts_transition(key, u, lambda v: self.potential(v, source, model), inverse_mass, eps,
                            max_tree_depth=(current, max(depths)))
        return t.u, t.potential_energy, t.accept_prob, t.diverging, eps, t.num_steps, t.energy

    def _hmc(self, key, u, source, model, inverse_mass, log_step_size, warming=None):
        """One Metropolis-corrected HMC transition of ``u`` with metric ``inverse_mass``."""
        k_eps, k_p, k_acc = jr.split(key, 3)
        jitter = jr.uniform(k_eps, (), u.dtype, 1.0 - self.step_jitter, 1.0 + self.step_jitter)
        eps = jnp.exp(log_step_size) * jitter
        vg = jax.value_and_grad(lambda v: self.potential(v, source, model))
        mass = jnp.linalg.inv(inverse_mass)
        chol = jnp.linalg.cholesky(0.5 * (mass + mass.T))
        p = chol @ jr.normal(k_p, u.shape, u.dtype)  # p ~ N(0, M)

        def kinetic(p):
            return 0.5 * p @ (inverse_mass @ p)

        pe0, g0 = vg(u)

        def leapfrog(carry, _):
            q, p, g = carry
            p = p - 0.5 * eps * g
            q = q + eps * (inverse_mass @ p)
            pe, g = vg(q)
            p = p - 0.5 * eps * g
            return (q, p, g), pe

        (q, p1, _), pes = jax.lax.scan(leapfrog, (u, p, g0), None, length=self.num_leapfrog)
        pe1 = pes[-1]
        delta = (pe1 + kinetic(p1)) - (pe0 + kinetic(p))
        delta = jnp.where(jnp.isfinite(delta), delta, jnp.inf)
        accept_prob = jnp.exp(jnp.minimum(-delta, 0.0))
        accept = jr.uniform(k_acc, (), u.dtype) < accept_prob
        return (
            jnp.where(accept, q, u),
            jnp.where(accept, pe1, pe0),
            accept_prob,
            delta > 1000.0,
            eps,
            jnp.asarray(self.num_leapfrog, jnp.int32),
            jnp.where(accept, pe1 + kinetic(p1), pe0 + kinetic(p)),
        )

    # ---- chain starts ------------------------------------------------------------------------
    def warm_start(
        self,
        key: PRNGKeyArray,
        model: JointModel,
        prior: AbstractSourcePrior,
        config: GibbsDDRMConfig = GibbsDDRMConfig(),
        tries: int = 4,
    ) -> tuple[dict[str, Array], SourceImage]:
        """The best of ``tries`` continuous-time GibbsDDRM draws by residual chi^2 (constrained lens, source).

        The same start as :meth:`blindlens.gibbs_kernel.BlindLensGibbs.warm_start_draw` without
        a given lens: each try starts from its own prior draw of the lens. Pure (``vmap``-able).
        """
        draw = best_of_gibbsddrm(key, model, prior, config, tries)
        return dict(draw.lens), draw.source

    def lens_from_values(self, values: Mapping[str, Array]):
        """The lens Module of constrained site values."""
        from .numpyro_model import lens_from_values

        return lens_from_values(self.lens_model, values)
