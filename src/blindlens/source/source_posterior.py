"""Source draws for a fixed lens: guided reverse VE diffusion ``p(source | lens, data)``.

The reverse SDE of the VE process (Song et al. 2021, ICLR, eq. 6) is integrated with the
posterior score ``grad log p_t(x) + grad log p_t(y | x)`` in place of the prior score
(Adam et al. 2022, arXiv:2211.03812, eq. 5): the prior score comes from the
:class:`~blindlens.source_prior.AbstractSourcePrior`, the likelihood score from any
:class:`~blindlens.likelihood_score.AbstractLikelihoodScore`. Integration is
:func:`blindlens.diffusion_sde.sample_reverse_diffusion` (diffrax Euler or Heun in the reversed
clock ``s = 1 - t``, optional Langevin corrector, final Tweedie denoise).

* :func:`source_step` draws one sample; it is the kernel the Gibbs sampler calls.
* :func:`sample_source_posterior` draws many, ``vmap``-batched and compiled once per problem
  shape and sampler configuration (a new observation or lens of the same shape reuses it).
* :func:`fixed_lens_posterior` is the whole fixed-lens workflow used by ``blindlens sample
  --fixed-lens``: samples, model images and normalised residuals.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Float, Image, PRNGKeyArray, SourceImage
from ..physics.linear_operator import AbstractLinearOperator
from ..prior.diffusion_sde import (
    SOLVER_NAMES,
    LinearlyImplicitEulerMaruyama,
    is_implicit_solver,
    sample_reverse_diffusion,
)
from ..prior.gaussian_prior import _check_problem, inverse_noise_variance
from ..prior.source_prior import AbstractSourcePrior
from .likelihood_score import AbstractLikelihoodScore, LikelihoodProblem, PiGDM

__all__ = [
    "SourceSamplerConfig",
    "source_step",
    "source_refresh",
    "refresh_steps",
    "sample_source_posterior",
    "FixedLensPosterior",
    "fixed_lens_posterior",
    "fixed_lens_operator",
    "plot_fixed_lens_summary",
]


_SOLVER_NAMES = ("auto", *SOLVER_NAMES)


class SourceSamplerConfig(eqx.Module):
    """Settings of the guided reverse diffusion for the source (all static: changing one recompiles).

    Parameters
    ----------
    guidance
        The likelihood score. Default :class:`~blindlens.likelihood_score.PiGDM` (full
        ``A A^T``): two network passes per step, stable from a few tens of steps. Use
        :class:`~blindlens.likelihood_score.CalibratedTweedie` when calibration matters more than
        cost (exact for a Gaussian prior, ~10-50x the network passes); ``CLA`` is stiff with
        lensing (explicit Euler needs thousands of steps) and runs with the IMEX solver under
        ``solver="auto"``: one network pass per step, more over-confident than PiGDM. See
        ``docs/source_posterior.md`` and ``docs/imex_solver.md``.
    num_steps
        Uniform reverse-time steps from ``t = 1`` to ``t_final`` (default 50: with the shipped prior
        more steps did not improve the residuals or coverage, docs/source_posterior.md).
    solver
        ``"auto"`` (default: the guidance's ``default_solver``, i.e. ``"imex"`` for CLA and
        ``"euler"`` otherwise), ``"euler"`` (Euler-Maruyama), ``"heun"``, or ``"imex"``
        (:class:`~blindlens.diffusion_sde.LinearlyImplicitEulerMaruyama`: prior score explicit,
        a likelihood score that is affine in ``x_t`` implicit by CG; A-stable, fine from 10 steps on
        the trained-prior study problems), or
        a ``LinearlyImplicitEulerMaruyama(theta=..., rtol=..., max_steps=...)`` instance.
    t_final
        Last diffusion time (``sigma(t_final)`` is the residual noise the final denoise removes).
    corrector_steps, corrector_snr
        Langevin corrector moves after each predictor step (Song et al. 2021, Alg. 5).
    denoise
        Finish with Tweedie's denoiser of the posterior score.
    probability_flow
        Integrate the probability-flow ODE instead of the SDE.
    """

    guidance: AbstractLikelihoodScore = PiGDM()
    num_steps: int = eqx.field(static=True, default=50)
    solver: str | LinearlyImplicitEulerMaruyama = eqx.field(static=True, default="auto")
    t_final: float = eqx.field(static=True, default=1e-3)
    corrector_steps: int = eqx.field(static=True, default=0)
    corrector_snr: float = eqx.field(static=True, default=0.16)
    denoise: bool = eqx.field(static=True, default=True)
    probability_flow: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if int(self.num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}.")
        if self.solver not in _SOLVER_NAMES and not isinstance(self.solver, LinearlyImplicitEulerMaruyama):
            raise ValueError(
                f"solver must be one of {_SOLVER_NAMES} or a LinearlyImplicitEulerMaruyama(...), got {self.solver!r}."
            )
        if not 0 <= self.t_final < 1:
            raise ValueError(f"t_final must be in [0, 1), got {self.t_final}.")
        if int(self.corrector_steps) < 0:
            raise ValueError(f"corrector_steps must be >= 0, got {self.corrector_steps}.")
        if not isinstance(self.guidance, AbstractLikelihoodScore):
            raise ValueError(
                f"guidance must be an AbstractLikelihoodScore (CLA(), PiGDM(), CalibratedTweedie(), ...), "
                f"got {type(self.guidance).__name__}."
            )


def _guided_score(x, t, args):
    guidance, problem = args
    return guidance.posterior_score(x, t, problem)


def _prior_score(x, t, args):
    _, problem = args
    return problem.prior.score(x, t)


def _likelihood_score(x, t, args):
    guidance, problem = args
    return guidance.likelihood_score(x, t, problem)


def _resolved_solver(config: SourceSamplerConfig, prior: AbstractSourcePrior):
    if config.solver == "auto":
        return config.guidance.default_solver
    if is_implicit_solver(config.solver) and not config.guidance.affine_in_x(prior):
        raise ValueError(
            f"solver={config.solver!r} treats the likelihood score implicitly and needs one that is affine in "
            f"x_t (CLA, or ExactGaussianLikelihoodScore with a Gaussian prior); {type(config.guidance).__name__} "
            f"with {type(prior).__name__} is not. Use solver='euler' or 'heun'."
        )
    return config.solver


def _draw(
    key: PRNGKeyArray, problem: LikelihoodProblem, config: SourceSamplerConfig, x_init=None, t_start=1.0, num_steps=None
) -> SourceImage:
    prior = problem.prior
    solver = _resolved_solver(config, prior)
    split = is_implicit_solver(solver)
    return sample_reverse_diffusion(
        key,
        prior.sde,
        _prior_score if split else _guided_score,
        prior.shape,
        args=(config.guidance, problem),
        stiff_score_fn=_likelihood_score if split else None,
        num_steps=config.num_steps if num_steps is None else num_steps,
        t_final=config.t_final,
        t_start=t_start,
        x_init=x_init,
        solver=solver,
        probability_flow=config.probability_flow,
        corrector_steps=config.corrector_steps,
        corrector_snr=config.corrector_snr,
        denoise=config.denoise,
    )


def _check_pixel_scale(prior: AbstractSourcePrior, operator: AbstractLinearOperator) -> None:
    grid = getattr(operator, "source_grid", None)
    scale = getattr(grid, "pixel_scale", None)
    if scale is not None and abs(scale - prior.pixel_scale) > 1e-6 * prior.pixel_scale:
        raise ValueError(
            f"The prior was built for {prior.pixel_scale} arcsec/pixel but the operator's source grid "
            f"has {scale} arcsec/pixel; build the source grid at the prior's pixel scale."
        )


def source_step(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    config: SourceSamplerConfig = SourceSamplerConfig(),
) -> SourceImage:
    """Draw one source sample from ``p(s | y, A)`` with the guided reverse diffusion.

    Pure and jit-compatible (``eqx.filter_jit`` it, or call it inside a traced kernel); the
    result is a deterministic function of ``key``.

    Parameters
    ----------
    key
        PRNG key.
    prior
        Source prior (noised score in image units).
    operator
        Linear forward model ``A`` for the fixed lens (source ``(sy, sx)`` -> image ``(ny, nx)``).
    data
        Observed image ``(ny, nx)``.
    noise_sigma
        Noise standard deviation, scalar or ``(ny, nx)``; ``inf`` masks a pixel.
    config
        Sampler settings.

    Returns
    -------
    One source sample ``(sy, sx)`` in image units.
    """
    _check_pixel_scale(prior, operator)
    problem = config.guidance.prepare(prior, operator, data, noise_sigma)
    return _draw(key, problem, config)


def refresh_steps(prior: AbstractSourcePrior, config: SourceSamplerConfig, refresh_sigma: float) -> tuple[float, int]:
    """``(t_start, num_steps)`` of a partial refresh from noise level ``refresh_sigma``.

    ``t_start = sigma^-1(refresh_sigma)``; the steps keep the full trajectory's step length,
    ``ceil(num_steps (t_start - t_final) / (1 - t_final))`` (at least one).
    """
    sde = prior.sde
    if not sde.sigma_min < refresh_sigma < sde.sigma_max:
        raise ValueError(
            f"refresh_sigma must lie inside the prior's noise range ({sde.sigma_min}, {sde.sigma_max}), got "
            f"{refresh_sigma}."
        )
    # plain floats (the SDE's bounds are static), so this also works under jit
    t_start = math.log(refresh_sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
    if t_start <= config.t_final:
        raise ValueError(
            f"refresh_sigma {refresh_sigma} is below the sampler's final noise level sigma(t_final); raise it."
        )
    frac = (t_start - config.t_final) / (1.0 - config.t_final)
    return t_start, max(1, int(math.ceil(int(config.num_steps) * frac - 1e-9)))


def source_refresh(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    current: SourceImage,
    refresh_sigma: float,
    config: SourceSamplerConfig = SourceSamplerConfig(),
) -> SourceImage:
    """A Markov move of the source that leaves ``p(s | y, A)`` invariant: partial noising + guided denoising.

    Data augmentation with ``u = s + sigma_r z`` (``z ~ N(0, I)``, ``sigma_r = refresh_sigma``):
    drawing ``u | s`` and then ``s | u, y`` is a two-block Gibbs sampler of ``p(s, u | y)``,
    whose ``s``-marginal is the posterior. ``s | u, y`` is the guided reverse diffusion started
    at ``u`` at the time ``t_r`` with ``sigma(t_r) = sigma_r`` (the reverse process of the noised
    posterior, conditioned on its state at ``t_r``), so a move costs only the steps below
    ``t_r`` (:func:`refresh_steps`). With an exact posterior score the move is exact for any
    ``sigma_r``; with CLA or PiGDM it avoids the high-noise steps where their likelihood-score
    error is largest (``docs/source_posterior.md``). Small ``sigma_r`` moves the source less per
    call (the usual Gibbs trade-off): use it inside a Markov chain where the source is refreshed
    every sweep (:class:`blindlens.gibbs_kernel.BlindLensGibbs`), not for independent draws.

    Parameters
    ----------
    current
        The current source ``s`` (image units).
    refresh_sigma
        ``sigma_r``, in image units; must lie in the prior's noise range.
    key, prior, operator, data, noise_sigma, config
        As for :func:`source_step` (``config.num_steps`` counts steps of a full trajectory).
    """
    _check_pixel_scale(prior, operator)
    t_start, steps = refresh_steps(prior, config, refresh_sigma)
    k_noise, k_path = jr.split(key)
    u, _ = prior.sde.perturb(k_noise, jnp.asarray(current), t_start)
    problem = config.guidance.prepare(prior, operator, data, noise_sigma)
    return _draw(k_path, problem, config, x_init=u, t_start=t_start, num_steps=steps)


_TRACES = {"sample_batch": 0}


@eqx.filter_jit
def _sample_batch(keys, prior, operator, data, noise_sigma, config, batch_size):
    _TRACES["sample_batch"] += 1
    problem = config.guidance.prepare(prior, operator, data, noise_sigma)
    if batch_size is None:
        return jax.vmap(lambda k: _draw(k, problem, config))(keys)
    return jax.lax.map(lambda k: _draw(k, problem, config), keys, batch_size=batch_size)


def sample_source_posterior(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    *,
    num_samples: int,
    guidance: AbstractLikelihoodScore | None = None,
    num_steps: int = 50,
    solver: str | LinearlyImplicitEulerMaruyama = "auto",
    t_final: float = 1e-3,
    corrector_steps: int = 0,
    corrector_snr: float = 0.16,
    denoise: bool = True,
    config: SourceSamplerConfig | None = None,
    batch_size: int | None = None,
) -> Float[Array, "num_samples sy sx"]:
    """Draw ``num_samples`` independent source samples for a fixed lens.

    Sample ``i`` uses ``jax.random.split(key, num_samples)[i]``, so results are deterministic
    given ``key`` and independent of ``batch_size``. The batched sampler is compiled once per
    (shapes, configuration); new data, noise maps or lens parameters of the same shapes reuse it.

    Parameters
    ----------
    key, prior, operator, data, noise_sigma
        As for :func:`source_step`.
    num_samples
        Number of samples (>= 1).
    guidance, num_steps, solver, t_final, corrector_steps, corrector_snr, denoise
        Sampler settings, used when ``config`` is not given (see :class:`SourceSamplerConfig`).
    config
        A complete :class:`SourceSamplerConfig` (overrides the keyword settings).
    batch_size
        ``None``: all samples in one ``vmap``; otherwise that many at a time (bounds memory).

    Returns
    -------
    Samples ``(num_samples, sy, sx)`` in image units.
    """
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}.")
    if config is None:
        config = SourceSamplerConfig(
            guidance=PiGDM() if guidance is None else guidance,
            num_steps=num_steps,
            solver=solver,
            t_final=t_final,
            corrector_steps=corrector_steps,
            corrector_snr=corrector_snr,
            denoise=denoise,
        )
    _check_pixel_scale(prior, operator)
    _check_problem(prior.shape, operator, data)
    inverse_noise_variance(noise_sigma, operator.image_shape)  # eager value checks
    keys = jr.split(key, int(num_samples))
    return _sample_batch(keys, prior, operator, jnp.asarray(data), jnp.asarray(noise_sigma), config, batch_size)


class FixedLensPosterior(eqx.Module):
    """Source samples for a fixed lens with their model images and residuals.

    Attributes
    ----------
    samples
        Source samples ``(n, sy, sx)``.
    model_images
        ``A s`` per sample ``(n, ny, nx)``.
    normalized_residuals
        ``(y - A s) / sigma_n`` per sample ``(n, ny, nx)``; ``0`` at masked pixels.
    chi2
        ``sum (y - A s)^2 / sigma_n^2`` per sample over unmasked pixels ``(n,)`` (for exact
        posterior samples it follows ``chi^2_N``, data-and-validation.md §B.1(3)).
    num_pixels
        Number of unmasked image pixels ``N``.
    """

    samples: Float[Array, "n sy sx"]
    model_images: Float[Array, "n ny nx"]
    normalized_residuals: Float[Array, "n ny nx"]
    chi2: Float[Array, " n"]
    num_pixels: int = eqx.field(static=True)


def fixed_lens_posterior(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    *,
    num_samples: int,
    config: SourceSamplerConfig = SourceSamplerConfig(),
    batch_size: int | None = None,
    polish_moves: int = 0,
    polish=None,
) -> FixedLensPosterior:
    """Sample the source for a fixed lens and compute model images and normalised residuals.

    This is the library side of ``blindlens sample --fixed-lens``; see
    :func:`sample_source_posterior` for the arguments.

    Parameters
    ----------
    polish_moves
        Exact split-Gibbs moves applied to every guided draw (:mod:`blindlens.split_gibbs`; 0:
        none). They redraw the well-measured source directions without the guidance's bias:
        on 16 lenstronomy-simulated lenses the draws' residual chi^2/N went from +0.005 above the
        true source's own to +0.001 after 10 moves (up to +0.05 -> +0.00 per system), but the
        galaxy-pixel coverage did not improve (0.566 -> 0.540 at 68%; docs/source_posterior.md).
    polish
        The moves' :class:`~blindlens.split_gibbs.SplitGibbsConfig` (default settings if ``None``).
    """
    if int(polish_moves) < 0:
        raise ValueError(f"polish_moves must be >= 0, got {polish_moves}.")
    k_draw, k_polish = jr.split(key) if int(polish_moves) > 0 else (key, None)
    samples = sample_source_posterior(
        k_draw, prior, operator, data, noise_sigma, num_samples=num_samples, config=config, batch_size=batch_size
    )
    if int(polish_moves) > 0:
        from .split_gibbs import SplitGibbsConfig, sample_source_posterior_split_gibbs

        samples = sample_source_posterior_split_gibbs(
            k_polish, prior, operator, data, noise_sigma, samples, num_samples=1, burn_in=0,
            thin=int(polish_moves), config=SplitGibbsConfig() if polish is None else polish,
        )[:, 0]
    models = jax.vmap(operator)(samples)
    w = inverse_noise_variance(noise_sigma, operator.image_shape, operator)
    resid = (jnp.asarray(data) - models) * jnp.sqrt(w)
    chi2 = jnp.sum(resid**2, axis=(1, 2))
    return FixedLensPosterior(samples, models, resid, chi2, int(jnp.sum(w > 0)))


def fixed_lens_operator(
    observation,
    lens,
    prior: AbstractSourcePrior,
    *,
    source_center: tuple[float, float] = (0.0, 0.0),
    supersampling: int = 2,
):
    """The :class:`~blindlens.lensing_operator.LensingOperator` of an observation for a fixed lens.

    The source grid has the prior's shape and pixel scale, centred at ``source_center`` (arcsec);
    the observation supplies the image grid, PSF and mask.
    """
    from ..physics.grid import PixelGrid
    from ..physics.lensing_operator import LensingOperator

    source_grid = PixelGrid(prior.shape, prior.pixel_scale, (float(source_center[0]), float(source_center[1])))
    return LensingOperator(
        lens, observation.image_grid, source_grid, psf=observation.psf_operator(),
        supersampling=supersampling, mask=observation.mask,
    )


def plot_fixed_lens_summary(observation, posterior: FixedLensPosterior, source_grid, path):
    """Write a PNG: data, mean model, (data - mean model)/sigma, source mean, source std.

    Image panels use the observation's arcsec extent, source panels ``source_grid``'s; masked
    pixels are blank in the residual panel. Returns the path.
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    y = np.asarray(observation.image)
    noise = np.asarray(observation.noise)
    mask = np.ones(y.shape, bool) if observation.mask is None else np.asarray(observation.mask) > 0
    model = np.asarray(posterior.model_images).mean(axis=0)
    resid = np.where(mask, (y - model) / noise, np.nan)
    samples = np.asarray(posterior.samples)
    image_grid = observation.image_grid  # grid.show: imshow, or pcolormesh for a rotated sky frame
    panels = [
        ("data", y, image_grid, "viridis", None),
        ("mean model", model, image_grid, "viridis", None),
        ("(data - mean model) / sigma", resid, image_grid, "RdBu_r", (-4, 4)),
        ("source mean", samples.mean(axis=0), source_grid, "viridis", None),
        ("source std", samples.std(axis=0), source_grid, "magma", None),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    for ax, (title, arr, grid, cmap, lim) in zip(axes, panels):
        vmin, vmax = lim if lim else (None, None)
        im = grid.show(ax, arr, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x [arcsec]")
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("y [arcsec]")
    fig.suptitle(f"{samples.shape[0]} source samples, fixed lens; chi2/N of mean model "
                 f"{np.nansum(resid**2) / mask.sum():.3f}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
