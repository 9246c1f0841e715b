"""The source step of the Gibbs sweep: the source block and the source moves it runs.

:class:`SourceBlock` is the source block of :class:`~blindlens.gibbs_kernel.BlindLensGibbs`, a
small NumPyro ``MCMCKernel`` (state :class:`SourceBlockState`) that reads the lens from the Gibbs
conditioning and moves the source by a callable ``sampler(key, operator, data, noise_sigma) ->
source`` (:data:`SourceSampler`, a fresh draw of ``p(s | theta, y)``) or ``refresher(key,
operator, data, noise_sigma, current) -> source`` (a Markov move that leaves ``p(s | theta, y)``
invariant), and optionally by a ``descent`` move in the first part of warm-up (fresh draws that
reach the posterior fast from a poor start, then the invariant move for the rest of warm-up and
every kept draw). The adapters here wrap the package's source samplers in that form: the guided reverse
SDE from ``t = 1`` (:func:`blindlens.source_posterior.source_step`), the partial refresh
(:func:`blindlens.source_posterior.source_refresh`, level :func:`auto_refresh_sigma` by default)
and the exact split-Gibbs move (:func:`blindlens.split_gibbs.split_gibbs_move`). Each adapter is
a module-level class (not a closure), so that kernels holding it pickle, and carries its cost per
call as ``num_score_evals`` (for the split-Gibbs move, whose denoise steps follow ``rho``, the most
a call takes; its ``move_and_count`` returns the passes taken, which :func:`counted_move` prefers).
:func:`_staged` passes a noise map into a traced source step (also
used by :func:`blindlens.gibbsddrm.sample_gibbsddrm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from numpyro.infer.gibbs import GIBBS_SITES_KWARG
from numpyro.infer.mcmc import MCMCKernel

from .._types import Array, Float, PRNGKeyArray, SourceImage
from ..prior.source_prior import AbstractSourcePrior
from .numpyro_model import SOURCE_SITE, JointModel, lens_from_values, lens_site_names

__all__ = ["SourceBlock", "SourceBlockState", "SourceSampler", "auto_refresh_sigma"]


SourceSampler = Callable[[PRNGKeyArray, object, Float[Array, "ny nx"], Float[Array, "ny nx"]], SourceImage]
"""``sampler(key, operator, data, noise_sigma) -> source``: one draw of ``p(s | A, y)``."""


def _staged(noise):
    """``noise`` as a value of the current trace.

    ``gaussian_prior.inverse_noise_variance`` validates concrete noise maps (with numpy, so
    constants inside a trace work too); a traced array skips that check, which
    :func:`~blindlens.numpyro_model.joint_model` has already done, so the check does not run once
    per source step.
    """
    return noise + jnp.zeros((), noise.dtype)


def _default_source_config():
    from ..source.source_posterior import SourceSamplerConfig

    return SourceSamplerConfig(num_steps=50)  # the accuracy-cost curve, docs/source_posterior.md


class _SourceStepSampler:
    """:func:`blindlens.source_posterior.source_step` as a :data:`SourceSampler`.

    A module-level callable (not a closure) so that kernels holding it can be pickled.
    """

    def __init__(self, prior: AbstractSourcePrior, config):
        self.prior = prior
        self.config = config
        self.num_score_evals = _evals_per_draw(config, int(config.num_steps))

    def __call__(self, key, operator, data, noise):
        from ..source.source_posterior import source_step

        return source_step(key, self.prior, operator, data, noise, self.config)


def _source_step_sampler(prior: AbstractSourcePrior, config) -> SourceSampler:
    return _SourceStepSampler(prior, config)


def _evals_per_draw(config, num_steps: int) -> int:
    steps = num_steps * (1 + int(getattr(config, "corrector_steps", 0)))
    steps *= 2 if getattr(config, "solver", "euler") == "heun" else 1
    return steps + int(bool(getattr(config, "denoise", True)))


class _SourceRefreshSampler:
    """:func:`blindlens.source_posterior.source_refresh` as ``refresher(key, op, data, noise, current)``
    (a module-level callable, picklable)."""

    def __init__(self, prior: AbstractSourcePrior, config, refresh_sigma: float):
        from ..source.source_posterior import refresh_steps

        self.prior = prior
        self.config = config
        self.refresh_sigma = refresh_sigma
        self.num_score_evals = _evals_per_draw(config, refresh_steps(prior, config, refresh_sigma)[1])

    def __call__(self, key, operator, data, noise, current):
        from ..source.source_posterior import source_refresh

        return source_refresh(key, self.prior, operator, data, noise, current, self.refresh_sigma, self.config)


def _source_refresh_sampler(prior: AbstractSourcePrior, config, refresh_sigma: float):
    return _SourceRefreshSampler(prior, config, refresh_sigma)


class _SplitGibbsMover:
    """:func:`blindlens.split_gibbs.split_gibbs_move` as ``refresher(key, op, data, noise, current)``
    (a module-level callable, picklable)."""

    def __init__(self, prior: AbstractSourcePrior, config):
        self.prior = prior
        self.config = config
        self.num_score_evals = int(config.network_passes_per_move) * int(config.num_moves)

    def __call__(self, key, operator, data, noise, current):
        return self.move_and_count(key, operator, data, noise, current)[0]

    def move_and_count(self, key, operator, data, noise, current):
        """``(source, network passes)``: the denoise's steps follow ``rho``, known at run time."""
        from ..source.split_gibbs import split_gibbs_move

        return split_gibbs_move(key, self.prior, operator, data, noise, current, self.config, with_passes=True)


def counted_move(move, key, operator, data, noise, current):
    """``(source, network passes)`` of one call of a ``refresher``-form source move: its
    ``move_and_count`` where it has one (a cost known at run time), else the call and its static
    ``num_score_evals``."""
    with_count = getattr(move, "move_and_count", None)
    if with_count is not None:
        source, passes = with_count(key, operator, data, noise, current)
        return source, jnp.asarray(passes, jnp.int32)
    return move(key, operator, data, noise, current), jnp.asarray(int(getattr(move, "num_score_evals", 0)), jnp.int32)


def _descent_move(warmup_source_move: str | None, prior: AbstractSourcePrior, config, model: JointModel):
    """The warm-up descent of ``warmup_source_move``: ``None``, ``"draw"`` (fresh guided draws) or the
    guided refresh at :func:`auto_refresh_sigma`'s level (``"draw"`` where that level is ``None``)."""
    if warmup_source_move is None:
        return None
    if warmup_source_move not in ("draw", "refresh"):
        raise ValueError(f"warmup_source_move must be 'draw', 'refresh' or None, got {warmup_source_move!r}.")
    if warmup_source_move == "refresh":
        if model is None:
            raise ValueError("warmup_source_move='refresh' reads the noise level of a model: pass model=.")
        level = auto_refresh_sigma(model, prior)
        if level is not None:
            return _source_refresh_sampler(prior, config, level)
    return "draw"


def misfits(model: JointModel, lens, source, threshold: float) -> Array:
    """Whether ``(lens, source)`` misfits: residual chi^2/N above ``1 + threshold sqrt(2/N)`` (N unmasked pixels)."""
    return chi2_misfits(model, model.residual_chi2(lens, source), threshold)


def chi2_misfits(model: JointModel, chi2: Array, threshold: float) -> Array:
    """Whether a residual ``chi2`` (over ``model``'s unmasked pixels) lies above ``N (1 + threshold sqrt(2/N))``."""
    n = jnp.sum(model.mask).astype(chi2.dtype)
    return chi2 / n > 1.0 + threshold * jnp.sqrt(2.0 / n)


def auto_refresh_sigma(model: JointModel, prior: AbstractSourcePrior) -> float | None:
    """Default partial-refresh level: ``3 x`` the median noise sd of the unmasked pixels.

    The move must decorrelate the source on the scale of its posterior uncertainty, which is set
    by the noise (each source pixel is seen by several image pixels, so it is measured to better
    than the noise sd). Measured: ``6 sigma_n`` gives a median start/refresh correlation of 0.03
    over the posterior modes of the 16x16 exact test; ``3 sigma_n`` passes the gold standard
    (docs/joint_inference.md). Returns ``None`` (full draws) when
    that level lies outside ``(4 sigma_min, sigma_max / 4)`` of the prior's diffusion, where a
    refresh would either barely move the source or cost as much as a full draw.
    """
    noise = np.asarray(model.noise)
    observed = np.broadcast_to(np.asarray(model.mask, bool), noise.shape)
    sigma_r = 3.0 * float(np.median(noise[observed]))
    sde = prior.sde
    if not 4 * sde.sigma_min < sigma_r < sde.sigma_max / 4:
        return None
    return sigma_r


class _FreshDraw:
    """A :data:`SourceSampler` as ``refresher(key, op, data, noise, current)`` that ignores ``current``
    (a fresh draw every sweep; module-level, picklable)."""

    def __init__(self, sampler: SourceSampler):
        self.sampler = sampler
        self.num_score_evals = int(getattr(sampler, "num_score_evals", 0))

    def __call__(self, key, operator, data, noise, current):
        return self.sampler(key, operator, data, noise)


class SourceBlockState(NamedTuple):
    """State of the source block.

    Attributes
    ----------
    z
        ``{"source": (sy, sx) array}``.
    rng_key
        Key for the next source draw.
    num_score_evals
        Cumulative prior-score (network) evaluations spent by the source block.
    descent_left
        Sweeps still to be moved by the block's warm-up ``descent`` move (0 once the sweep's own
        move has taken over).
    """

    z: dict
    rng_key: Array
    num_score_evals: Array
    descent_left: Array


class SourceBlock(MCMCKernel):
    """The source block of :class:`BlindLensGibbs`: ``s ~ p(s | theta, y)`` by a guided reverse SDE.

    It reads the current lens from NumPyro's Gibbs conditioning (``model_kwargs["_gibbs_sites"]``),
    rebuilds the lens and its lensing operator from the lens model (NumPyro 0.22 passes only
    latent sites, never deterministic intermediates), and replaces the source by a fresh draw.
    It caches nothing, so :meth:`refresh` is the identity.

    Parameters
    ----------
    model
        The joint model.
    source_sampler
        ``sampler(key, operator, data, noise_sigma) -> source``; its attribute
        ``num_score_evals`` (if any) is counted per draw.
    refresher
        Optional ``refresher(key, operator, data, noise_sigma, current) -> source``, a Markov move
        of the source that leaves ``p(s | theta, y)`` invariant (a partial refresh,
        :func:`blindlens.source_posterior.source_refresh`); used for every sweep instead of a
        fresh draw (the first source still comes from ``source_sampler``).
    descent
        Optional move of the same form (or ``"draw"``: a fresh draw from ``source_sampler``)
        used instead of ``refresher`` for the first ``round(descent_fraction * num_warmup)``
        sweeps: a move that need not keep the posterior but reaches it fast from a poor start
        (warm-up draws are discarded). The draws kept are all made by ``refresher``.
    descent_fraction
        Fraction of the warm-up sweeps moved by ``descent``, in ``[0, 1]``.
    descent_threshold
        ``None`` (default): every chain descends. A number ``k``: a chain descends only if its
        starting residual chi^2/N exceeds ``1 + k sqrt(2 / N)`` (``N`` unmasked pixels: ``k``
        standard deviations of chi^2/N for a fit at the noise), so that a chain whose warm start
        already fits skips the descent's cost.
    descent_exit
        ``None`` (default): a descending chain descends for all of its descent sweeps. A number
        ``k``: it hands over to ``refresher`` after the first descent sweep whose new source fits
        the current lens within ``1 + k sqrt(2 / N)``, as a chain that started there would (a
        descent draw costs as much as a full source draw).
    """

    sample_field = "z"

    def __init__(
        self,
        model: JointModel,
        source_sampler: SourceSampler,
        refresher=None,
        descent=None,
        descent_fraction: float = 0.5,
        descent_threshold: float | None = None,
        descent_exit: float | None = None,
    ):
        if not 0.0 <= float(descent_fraction) <= 1.0:
            raise ValueError(f"descent_fraction must lie in [0, 1], got {descent_fraction}.")
        if descent_threshold is not None and not float(descent_threshold) >= 0.0:
            raise ValueError(f"descent_threshold must be >= 0 or None, got {descent_threshold}.")
        self._descent_threshold = None if descent_threshold is None else float(descent_threshold)
        if descent_exit is not None and not float(descent_exit) >= 0.0:
            raise ValueError(f"descent_exit must be >= 0 or None, got {descent_exit}.")
        self._descent_exit = None if descent_exit is None else float(descent_exit)
        self._joint = model
        self._sampler = source_sampler
        self._refresher = refresher
        self._descent = _FreshDraw(source_sampler) if isinstance(descent, str) and descent == "draw" else descent
        if isinstance(self._descent, str):
            raise ValueError(f"descent must be a move or 'draw', got {descent!r}.")
        self._descent_fraction = float(descent_fraction)
        self._lens_sites = lens_site_names(model.lens_model)
        sweep_cost = source_sampler if refresher is None else refresher
        self._evals = int(getattr(sweep_cost, "num_score_evals", 0))
        self._descent_evals = int(getattr(self._descent, "num_score_evals", 0))

    def _operator_and_data(self, lens_values):
        lens = lens_from_values(self._joint.lens_model, lens_values)
        return self._joint.operator(lens, masked=True), self._joint.source_data(lens)

    def draw(self, key, lens_values):
        """A fresh source draw given the lens (used for the first state)."""
        op, data = self._operator_and_data(lens_values)
        return self._sampler(key, op, data, _staged(self._joint.noise))

    def move_and_count(self, key, lens_values, current):
        """One sweep's source update (the refresher's move from ``current``, or a fresh draw) and the
        network passes it took: ``(source, passes)``."""
        if self._refresher is None:
            return self.draw(key, lens_values), jnp.asarray(self._evals, jnp.int32)
        op, data = self._operator_and_data(lens_values)
        return counted_move(self._refresher, key, op, data, _staged(self._joint.noise), current)

    def descent_sweeps(self, num_warmup: int) -> int:
        """Warm-up sweeps moved by the ``descent`` move (0 without one)."""
        return 0 if self._descent is None else round(self._descent_fraction * int(num_warmup))

    def _misfits_by(self, level: float | None, lens_values, source) -> Array:
        """Whether ``(lens_values, source)`` misfits by more than ``level`` sd of chi^2/N (``True`` for ``None``)."""
        if level is None:
            return jnp.asarray(True)
        return misfits(self._joint, lens_from_values(self._joint.lens_model, lens_values), source, level)

    def starts_poorly(self, lens_values, source) -> Array:
        """Whether a chain starting at ``(lens_values, source)`` misfits by more than ``descent_threshold``
        (``True`` without a threshold)."""
        return self._misfits_by(self._descent_threshold, lens_values, source)

    def _still_misfits(self, lens_values, source) -> Array:
        """Whether a descending chain goes on descending after a move to ``source``: ``True`` without a
        ``descent_exit``, else whether ``(lens_values, source)`` misfits by more than it."""
        return self._misfits_by(self._descent_exit, lens_values, source)

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        if not init_params or SOURCE_SITE not in init_params:
            raise ValueError("SourceBlock needs an initial source; use it inside BlindLensGibbs.")
        source = jnp.asarray(init_params[SOURCE_SITE])
        descent = jnp.asarray(self.descent_sweeps(num_warmup), jnp.int32)
        cond = (model_kwargs or {}).get(GIBBS_SITES_KWARG, {})
        if self._descent is not None and self._descent_threshold is not None and all(n in cond for n in self._lens_sites):
            poor = self.starts_poorly({n: cond[n] for n in self._lens_sites}, source)
            descent = jnp.where(poor, descent, 0).astype(jnp.int32)
        return SourceBlockState({SOURCE_SITE: source}, rng_key, jnp.zeros((), jnp.int32), descent)

    def sample(self, state, model_args, model_kwargs):
        cond = (model_kwargs or {}).get(GIBBS_SITES_KWARG, {})
        missing = [n for n in self._lens_sites if n not in cond]
        if missing:
            raise ValueError(f"SourceBlock did not receive the lens sites {missing}; run it inside Gibbs.")
        key, sub = jr.split(state.rng_key)
        lens_values = {n: cond[n] for n in self._lens_sites}
        current = state.z[SOURCE_SITE]
        if self._descent is None:
            source, cost = self.move_and_count(sub, lens_values, current)
        else:
            descending = state.descent_left > 0

            def descend():
                op, data = self._operator_and_data(lens_values)
                source = self._descent(sub, op, data, _staged(self._joint.noise), current)
                return source, jnp.asarray(self._descent_evals, jnp.int32), self._still_misfits(lens_values, source)

            def sweep_move():
                source, cost = self.move_and_count(sub, lens_values, current)
                return source, cost, jnp.asarray(True)

            source, cost, still = jax.lax.cond(descending, descend, sweep_move)
        left = jnp.maximum(state.descent_left - 1, 0).astype(state.descent_left.dtype)
        if self._descent is not None:  # the descent ends early once its source fits (with an exit level)
            left = jnp.where(still, left, 0).astype(state.descent_left.dtype)
        return SourceBlockState({SOURCE_SITE: source}, key, state.num_score_evals + cost, left)

    def refresh(self, state, model_args, model_kwargs):
        return state

    def wrap_model(self, wrapper):
        return self

    def get_constrain_fn(self, model_args, model_kwargs):
        return lambda z: z

    def get_diagnostics_str(self, state):
        return ""
