"""Twisted sequential Monte Carlo for the source posterior: guided diffusion, reweighted.

A guided reverse diffusion (:mod:`blindlens.source_posterior`) follows an *approximate*
likelihood score (CLA, PiGDM, ...), so its draws come from an approximate posterior. Twisted SMC
(Wu, Trippe, Naesseth, Blei & Cunningham 2023, NeurIPS, "Practical and asymptotically exact
conditional sampling in diffusion models", Alg. 1) runs ``K`` guided trajectories side by side
and weights them so that the weighted particles target the exact posterior of the
(discretised) diffusion prior as ``K -> infinity``, whatever the approximation:

* twisting function ``p~_t(y | x_t)``: the likelihood score's own approximate likelihood
  (:meth:`~blindlens.likelihood_score.AbstractLikelihoodScore.log_likelihood_and_scores`), so the
  proposal is exactly the guided sampler's Euler-Maruyama step;
* reverse transition of the prior ``p(x' | x) = N(x + g^2 h s(x, t), g^2 h I)`` and guided
  proposal ``q(x' | x) = N(x + g^2 h [s(x, t) + grad log p~_t(y | x)], g^2 h I)``;
* incremental weight ``w = p(x' | x) p~_{t'}(y | x') / [q(x' | x) p~_t(y | x)]``, initial weight
  ``p~_1(y | x_1)`` (particles start from the prior's ``N(0, sigma_max^2 I)``);
* systematic resampling (Carpenter, Clifford & Fearnhead 1999) whenever the effective sample
  size drops below ``ess_threshold * K``.

At ``t_final`` the twist is the likelihood itself up to ``O(sigma(t_final)^2)`` (PiGDM's
``r_t^2 -> 0``; CLA's ``sigma_t^2 -> 0``), so the final weights correct the whole path. With
the exact likelihood score the weights stay uniform up to discretisation error; with an
approximate one they fix what it gets wrong -- e.g. the mode weights of a multimodal posterior,
which no Gaussian approximation of ``p(s | x_t)`` gets right (``docs/source_posterior.md``).
Cost: ``K`` guided trajectories per SMC run, plus nothing else (the twist is a by-product of the
score's CG solve). The particles of one run are correlated through resampling; independent
posterior draws come from independent runs (:func:`sample_source_posterior_smc`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Bool, Float, Image, PRNGKeyArray
from ..physics.linear_operator import AbstractLinearOperator
from ..prior.diffusion_sde import reverse_time_grid
from ..prior.source_prior import AbstractSourcePrior
from .likelihood_score import AbstractLikelihoodScore, LikelihoodProblem, PiGDM

__all__ = ["TwistedSMCConfig", "SMCResult", "twisted_smc", "sample_source_posterior_smc", "systematic_resample"]


class TwistedSMCConfig(eqx.Module):
    """Settings of twisted SMC (all static: changing one recompiles).

    Parameters
    ----------
    guidance
        The likelihood score; it must provide ``log_likelihood_and_scores`` (PiGDM, CLA,
        ExactGaussianLikelihoodScore, a TemperedLikelihoodScore of those). The proposal is an
        explicit Euler-Maruyama step (its density enters the weights), so CLA, which is stiff
        under explicit steps with lensing (``docs/imex_solver.md``), gives non-finite particles at
        practical step counts: use PiGDM (the default).
    num_particles
        ``K``, particles per run.
    num_steps
        Uniform Euler-Maruyama steps from ``t = 1`` to ``t_final``.
    t_final
        Last diffusion time.
    ess_threshold
        Resample when ``ESS < ess_threshold * K`` (``1``: every step; ``0``: never).
    reweight
        ``False`` keeps uniform weights (then a run is just ``K`` guided trajectories): the
        test control that must reproduce the guided sampler's bias.
    denoise
        Finish each particle with Tweedie's denoiser of the posterior score.
    """

    guidance: AbstractLikelihoodScore = PiGDM()
    num_particles: int = eqx.field(static=True, default=16)
    num_steps: int = eqx.field(static=True, default=50)
    t_final: float = eqx.field(static=True, default=1e-3)
    ess_threshold: float = eqx.field(static=True, default=0.5)
    reweight: bool = eqx.field(static=True, default=True)
    denoise: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if int(self.num_particles) < 1 or int(self.num_steps) < 1:
            raise ValueError(
                f"num_particles and num_steps must be >= 1, got {self.num_particles}, {self.num_steps}."
            )
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"ess_threshold must be in [0, 1], got {self.ess_threshold}.")
        if not 0 < self.t_final < 1:
            raise ValueError(f"t_final must be in (0, 1), got {self.t_final}.")
        if not isinstance(self.guidance, AbstractLikelihoodScore):
            raise ValueError(f"guidance must be an AbstractLikelihoodScore, got {type(self.guidance).__name__}.")


class SMCResult(eqx.Module):
    """Weighted particles of one twisted-SMC run.

    Attributes
    ----------
    particles
        ``(K, sy, sx)`` final particles (denoised if the config says so).
    log_weights
        ``(K,)`` normalised log weights (``logsumexp = 0``).
    ess
        ``(num_steps,)`` effective sample size after each step's reweighting, before resampling.
    resampled
        ``(num_steps,)`` whether the particles were resampled after that step.
    """

    particles: Float[Array, "K sy sx"]
    log_weights: Float[Array, " K"]
    ess: Float[Array, " steps"]
    resampled: Bool[Array, " steps"]

    @property
    def weights(self) -> Float[Array, " K"]:
        return jnp.exp(self.log_weights)

    @property
    def final_ess(self) -> Float[Array, "*runs"]:
        """``1 / sum(w^2)`` of the final weights (one value per run for stacked results)."""
        return _ess(self.log_weights)


def _normalise(log_w):
    return log_w - jax.nn.logsumexp(log_w, axis=-1, keepdims=True)


def _ess(log_w):
    return jnp.exp(-jax.nn.logsumexp(2.0 * _normalise(log_w), axis=-1))


def systematic_resample(key: PRNGKeyArray, log_weights: Float[Array, " K"]) -> Array:
    """Ancestor indices by systematic resampling (one uniform offset, ``K`` evenly spaced points).

    Unbiased: particle ``k`` is selected ``K w_k`` times in expectation, with at most one copy
    of variance (Douc, Cappe & Moulines 2005, ISPA).
    """
    k = log_weights.shape[0]
    cdf = jnp.cumsum(jnp.exp(_normalise(log_weights)))
    points = (jr.uniform(key, (), cdf.dtype) + jnp.arange(k, dtype=cdf.dtype)) / k
    return jnp.minimum(jnp.searchsorted(cdf, points, side="right"), k - 1)


def _run(key, problem: LikelihoodProblem, config: TwistedSMCConfig) -> SMCResult:
    prior, guidance = problem.prior, config.guidance
    sde, shape, k = prior.sde, prior.shape, int(config.num_particles)
    evaluate = jax.vmap(lambda x, t: guidance.log_likelihood_and_scores(x, t, problem), in_axes=(0, None))
    key_init, key_path = jr.split(key)
    ts = reverse_time_grid(config.num_steps, config.t_final)
    x = sde.prior_sample(key_init, (k, *shape))
    log_lik, prior_score, lik_score = evaluate(x, ts[0])
    log_w = log_lik if config.reweight else jnp.zeros(k, x.dtype)
    axes = tuple(range(1, x.ndim))

    def body(carry, inputs):
        x, log_lik, prior_score, lik_score, log_w = carry
        t0, t1, step_key = inputs
        k_noise, k_resample = jr.split(step_key)
        var = sde.diffusion(t0) ** 2 * (t0 - t1)  # g^2 h
        z = jr.normal(k_noise, x.shape, x.dtype)
        x_new = x + var * (prior_score + lik_score) + jnp.sqrt(var) * z
        new_log_lik, new_prior_score, new_lik_score = evaluate(x_new, t1)
        # log p(x'|x) - log q(x'|x) for x' = mu_q + sqrt(var) z and mu_p = mu_q - var * lik_score
        log_transition = -0.5 * var * jnp.sum(lik_score**2, axes) - jnp.sqrt(var) * jnp.sum(lik_score * z, axes)
        if config.reweight:
            log_w = log_w + log_transition + new_log_lik - log_lik
        log_w = _normalise(log_w)
        ess = _ess(log_w)
        resample = ess < config.ess_threshold * k
        idx = jnp.where(resample, systematic_resample(k_resample, log_w), jnp.arange(k))
        state = jax.tree.map(lambda a: a[idx], (x_new, new_log_lik, new_prior_score, new_lik_score))
        log_w = jnp.where(resample, jnp.full_like(log_w, -jnp.log(k)), log_w)
        return (*state, log_w), (ess, resample)

    keys = jr.split(key_path, config.num_steps)
    carry = (x, log_lik, prior_score, lik_score, _normalise(log_w))
    (x, _, prior_score, lik_score, log_w), (ess, resampled) = jax.lax.scan(body, carry, (ts[:-1], ts[1:], keys))
    if config.denoise:
        x = x + sde.sigma(ts[-1]) ** 2 * (prior_score + lik_score)
    return SMCResult(x, log_w, ess, resampled)


@eqx.filter_jit
def _run_many(keys, prior, operator, data, noise_sigma, config):
    problem = config.guidance.prepare(prior, operator, data, noise_sigma)
    return jax.lax.map(lambda key: _run(key, problem, config), keys)


def twisted_smc(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    config: TwistedSMCConfig = TwistedSMCConfig(),
) -> SMCResult:
    """One twisted-SMC run: ``K`` weighted particles targeting ``p(source | data)``.

    Parameters
    ----------
    key
        PRNG key; the result is a deterministic function of it.
    prior, operator, data, noise_sigma
        The source prior, forward operator ``A`` (lens + PSF), observed image and noise sd
        (image units; ``inf`` masks a pixel).
    config
        :class:`TwistedSMCConfig`.

    Returns
    -------
    :class:`SMCResult`. Weighted averages ``sum_k w_k f(x_k)`` estimate posterior expectations.
    """
    out = _run_many(key[None], prior, operator, data, noise_sigma, config)
    return jax.tree.map(lambda a: a[0], out)


def sample_source_posterior_smc(
    key: PRNGKeyArray,
    prior: AbstractSourcePrior,
    operator: AbstractLinearOperator,
    data: Image,
    noise_sigma: Float[Array, "..."] | float,
    num_samples: int,
    config: TwistedSMCConfig = TwistedSMCConfig(),
) -> tuple[Float[Array, "n sy sx"], SMCResult]:
    """``num_samples`` independent posterior draws: one particle, drawn by weight, per SMC run.

    Runs are evaluated one after the other (``lax.map``; each run already vectorises its ``K``
    particles). Returns the draws and the stacked :class:`SMCResult` of all runs (``ess``,
    ``log_weights``, ... with a leading run axis) for diagnostics.
    """
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    key_runs, key_pick = jr.split(key)
    runs = _run_many(jr.split(key_runs, num_samples), prior, operator, data, noise_sigma, config)
    picks = jax.vmap(jr.categorical)(jr.split(key_pick, num_samples), runs.log_weights)
    return runs.particles[jnp.arange(num_samples), picks], runs
