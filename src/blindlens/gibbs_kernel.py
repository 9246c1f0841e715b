"""Blind joint inference of lens and source: a NumPyro Gibbs kernel and a continuous-time sampler.

Two samplers of the joint posterior ``p(theta, s | y)`` of lens parameters ``theta`` (a
NumPyro lens model, :mod:`blindlens.numpyro_model`) and a pixelated source ``s`` with a
score-based diffusion prior:

:class:`BlindLensGibbs`
    A NumPyro MCMC kernel. Each sweep (1) moves the source by a ``p(s | theta, y)``-invariant
    guided reverse-SDE move (by default a partial refresh: the current source noised to
    ``sigma_r`` and denoised with prior score + likelihood score, :mod:`blindlens.source_posterior`;
    or a full trajectory from ``t = 1``), then (2) moves the lens with NumPyro's NUTS on
    ``p(theta | s, y)`` (:class:`LensNUTS`: the dense metric is the local curvature of that
    conditional, recomputed through warm-up and frozen after it), whose potential energy and
    gradient are refreshed after the source moved. Use it with ``numpyro.infer.MCMC`` and
    ``arviz.from_numpyro``.

:func:`sample_gibbsddrm` / :class:`GibbsDDRMConfig`
    The continuous-time GibbsDDRM scheme (Murata et al. 2023; Barco et al. 2025): lens
    parameters move by preconditioned MALA steps *between* reverse-SDE intervals, against a
    noise-aware likelihood at diffusion time ``t``; one trajectory gives one joint draw. It is
    a sampler of its own and, inside :class:`BlindLensGibbs`, the warm start of every chain.
    Known weakness: started far from the truth it can settle on a wrong, self-consistent
    lens/source pair (at the prior bounds in the tests); use several chains and check R-hat.

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

This module and :mod:`blindlens.numpyro_model` are the only places that import NumPyro.

References
----------
Murata et al. 2023, "GibbsDDRM: A Partially Collapsed Gibbs Sampler for Solving Blind Inverse
Problems with Denoising Diffusion Restoration", ICML (lens updates between denoising steps,
Tweedie plug-in, updates only in the late part of the reverse process).
Barco et al. 2025, arXiv:2511.04792 (continuous-time variant with a score-based source prior).
Hoffman & Gelman 2014, JMLR 15, 1593 (NUTS). Roberts & Tweedie 1996, Bernoulli 2, 341 (MALA);
Girolami & Calderhead 2011, JRSS B 73, 123 (position-dependent preconditioning).
Song et al. 2021, ICLR (reverse VE SDE, Euler-Maruyama predictor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer import NUTS
from numpyro.infer.gibbs import GIBBS_SITES_KWARG, Gibbs, GibbsState
from numpyro.infer.hmc_util import _initialize_mass_matrix  # NumPyro's own (inverse, sqrt, sqrt_inv) triple
from numpyro.infer.mcmc import MCMCKernel

from ._types import Array, Float, PRNGKeyArray, SourceImage
from .diffusion_sde import ReverseDiffusion, reverse_time_grid
from .grid import PixelGrid
from .lens_space import LensSpace as _LensSpace  # (its old name here)
from .lens_space import lens_unconstrained  # noqa: F401  (re-exported: part of this module's API)
from .linear_operator import AbstractLinearOperator
from .numpyro_model import (
    SOURCE_SITE,
    JointModel,
    is_default_init_strategy,
    joint_model,
    lens_from_values,
    lens_init_values,
    lens_site_names,
)
from .source_prior import AbstractSourcePrior

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
]

SourceSampler = Callable[[PRNGKeyArray, object, Float[Array, "ny nx"], Float[Array, "ny nx"]], SourceImage]
"""``sampler(key, operator, data, noise_sigma) -> source``: one draw of ``p(s | A, y)``."""


# --------------------------------------------------------------------------------------------
# source-step pieces


class _ProbedOperator(AbstractLinearOperator):
    """A lensing operator whose ``diag(A A^T)`` is a stored (probe) estimate.

    ``diag_aat`` of a PSF-convolved operator costs one FFT per source pixel; the
    continuous-time sampler moves the lens every interval and uses this wrapper so that the
    likelihood score's ``prepare`` reads a Hutchinson-type estimate
    ``E_z[(A z)^2]``, ``z`` Rademacher (Bekas, Kokiopoulou & Saad 2007, Appl. Numer. Math. 57,
    1214), instead.
    """

    base: AbstractLinearOperator
    diag: Float[Array, "ny nx"]

    @property
    def source_shape(self):
        return self.base.source_shape

    @property
    def image_shape(self):
        return self.base.image_shape

    @property
    def mask(self):
        return getattr(self.base, "mask", None)

    def __call__(self, source):
        return self.base(source)

    def adjoint(self, image):
        return self.base.adjoint(image)

    def diag_aat(self):
        return self.diag


def _staged(noise):
    """``noise`` as a value of the current trace.

    ``gaussian_prior.inverse_noise_variance`` validates concrete noise maps (with numpy, so
    constants inside a trace work too); a traced array skips that check, which
    :func:`~blindlens.numpyro_model.joint_model` has already done, so the check does not run once
    per source step.
    """
    return noise + jnp.zeros((), noise.dtype)


def _probe_diag_aat(operator: AbstractLinearOperator, key: PRNGKeyArray, num_probes: int, dtype):
    z = jr.rademacher(key, (num_probes, *operator.source_shape), dtype=dtype)
    return jnp.mean(jax.vmap(operator)(z) ** 2, axis=0)


def _default_source_config():
    from .source_posterior import SourceSamplerConfig

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
        from .source_posterior import source_step

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
        from .source_posterior import refresh_steps

        self.prior = prior
        self.config = config
        self.refresh_sigma = refresh_sigma
        self.num_score_evals = _evals_per_draw(config, refresh_steps(prior, config, refresh_sigma)[1])

    def __call__(self, key, operator, data, noise, current):
        from .source_posterior import source_refresh

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
        from .split_gibbs import split_gibbs_move

        return split_gibbs_move(key, self.prior, operator, data, noise, current, self.config)


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


# --------------------------------------------------------------------------------------------
# continuous-time GibbsDDRM


class GibbsDDRMConfig(eqx.Module):
    """Settings of the continuous-time GibbsDDRM sampler (:func:`sample_gibbsddrm`).

    Attributes
    ----------
    guidance
        The likelihood score guiding the source (an
        :class:`~blindlens.likelihood_score.AbstractLikelihoodScore`); ``None`` means
        :class:`~blindlens.likelihood_score.CLA`.
    num_steps
        Uniform reverse-SDE intervals from ``t = 1`` to ``t_final`` (Euler-Maruyama, or IMEX
        for CLA, whose explicit steps are unstable with lensing below thousands of steps).
    t_final
        Last diffusion time; the source is Tweedie-denoised there.
    lens_start
        Lens moves happen only at diffusion times ``t <= lens_start`` (GibbsDDRM's
        ``Hupdate_start``: early, the Tweedie estimate carries no information on the lens).
    lens_steps
        Preconditioned MALA steps on the lens after every interval with ``t <= lens_start``.
    final_lens_steps
        MALA steps after the last interval, against the plain likelihood with the denoised
        source (the returned lens is a draw from ``p(theta | s, y)`` given the returned source).
    step_size
        Initial MALA step size ``eps`` (in units of the local posterior scale, see
        :func:`sample_gibbsddrm`); adapted along the trajectory towards ``target_accept``.
    target_accept
        Target MALA acceptance rate (0.574 is optimal for MALA, Roberts & Rosenthal 1998).
    num_probes
        Random probes for the estimate of ``diag(A A^T)`` in the noise-aware likelihood.
    """

    guidance: object = None
    num_steps: int = eqx.field(static=True, default=200)
    t_final: float = eqx.field(static=True, default=1e-3)
    lens_start: float = eqx.field(static=True, default=0.6)
    lens_steps: int = eqx.field(static=True, default=2)
    final_lens_steps: int = eqx.field(static=True, default=20)
    step_size: float = eqx.field(static=True, default=1.0)
    target_accept: float = eqx.field(static=True, default=0.574)
    num_probes: int = eqx.field(static=True, default=8)

    def __check_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"GibbsDDRMConfig.num_steps must be >= 1, got {self.num_steps}.")
        if not 0 < self.t_final < 1:
            raise ValueError(f"GibbsDDRMConfig.t_final must be in (0, 1), got {self.t_final}.")
        if not 0 <= self.lens_start <= 1:
            raise ValueError(f"GibbsDDRMConfig.lens_start must be in [0, 1], got {self.lens_start}.")
        if self.lens_steps < 0 or self.final_lens_steps < 0:
            raise ValueError("GibbsDDRMConfig lens_steps and final_lens_steps must be >= 0.")
        if not self.step_size > 0:
            raise ValueError(f"GibbsDDRMConfig.step_size must be > 0, got {self.step_size}.")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"GibbsDDRMConfig.target_accept must be in (0, 1), got {self.target_accept}.")
        if self.num_probes < 1:
            raise ValueError(f"GibbsDDRMConfig.num_probes must be >= 1, got {self.num_probes}.")

    @property
    def num_score_evals(self) -> int:
        """Prior-score evaluations per trajectory (one per interval, one for the final denoise)."""
        return self.num_steps + 1


class GibbsDDRMResult(NamedTuple):
    """One joint draw of :func:`sample_gibbsddrm`.

    Attributes
    ----------
    lens
        Constrained lens parameters, site name -> value.
    source
        The source draw ``(sy, sx)``.
    accept_rate
        Mean MALA acceptance probability over the trajectory.
    step_size
        Final adapted MALA step size.
    """

    lens: dict
    source: SourceImage
    accept_rate: Float[Array, ""]
    step_size: Float[Array, ""]


def _metric(hess: Float[Array, "d d"], floor: float = 1e-2):
    """A positive-definite metric from a Hessian: ``V max(|lambda|, floor) V^T`` (SoftAbs-like,
    Betancourt 2013, "A General Metric for Riemannian Manifold HMC"); returns the factors
    ``(V, lambda)``."""
    hess = 0.5 * (hess + hess.T)
    lam, vec = jnp.linalg.eigh(hess)
    lam = jnp.maximum(jnp.abs(lam), floor)
    lam = jnp.where(jnp.isfinite(lam), lam, 1.0)
    vec = jnp.where(jnp.all(jnp.isfinite(vec)), vec, jnp.eye(vec.shape[0], dtype=vec.dtype))
    return vec, lam


def _mala(key, u, potential, num_steps: int, log_eps):
    """Preconditioned MALA with the metric ``M`` from the Hessian of ``potential`` at ``u``.

    Proposal ``u' = u - (eps^2/2) M^{-1} grad U(u) + eps M^{-1/2} xi`` with a Metropolis-Hastings
    correction (Roberts & Tweedie 1996; fixed metric within the call, so the chain is exactly
    reversible w.r.t. ``exp(-U)``). Returns ``(u, mean acceptance probability)``.
    """
    if num_steps == 0:
        return u, jnp.asarray(1.0, u.dtype)
    vec, lam = _metric(jax.hessian(potential)(u))
    eps = jnp.exp(log_eps)
    vg = jax.value_and_grad(potential)

    def minv(v):
        return vec @ ((vec.T @ v) / lam)

    def log_q(to, frm, grad_frm):  # log N(to; frm - eps^2/2 M^-1 g, eps^2 M^-1), up to consts
        d = to - frm + 0.5 * eps**2 * minv(grad_frm)
        proj = vec.T @ d
        return -0.5 * jnp.sum(lam * proj**2) / eps**2

    def step(carry, k):
        u, pe, grad = carry
        k_xi, k_acc = jr.split(k)
        xi = jr.normal(k_xi, u.shape, u.dtype)
        prop = u - 0.5 * eps**2 * minv(grad) + eps * (vec @ (xi / jnp.sqrt(lam)))
        pe_p, grad_p = vg(prop)
        log_alpha = -pe_p + pe + log_q(u, prop, grad_p) - log_q(prop, u, grad)
        log_alpha = jnp.where(jnp.isfinite(log_alpha), log_alpha, -jnp.inf)
        accept = jnp.log(jr.uniform(k_acc, dtype=u.dtype)) < log_alpha
        alpha = jnp.exp(jnp.minimum(log_alpha, 0.0))
        u, pe, grad = jax.tree.map(lambda a, b: jnp.where(accept, a, b), (prop, pe_p, grad_p), (u, pe, grad))
        return (u, pe, grad), alpha

    pe, grad = vg(u)
    (u, _, _), alphas = jax.lax.scan(step, (u, pe, grad), jr.split(key, num_steps))
    return u, jnp.mean(alphas)


def _precomputed_prior_score(x, t, args):
    return args[2]  # evaluated once per interval at (x, t0), shared with the Tweedie estimate


def _step_likelihood_score(x, t, args):
    guidance, problem, _ = args
    return guidance.likelihood_score(x, t, problem)


def _step_posterior_score(x, t, args):
    return _precomputed_prior_score(x, t, args) + _step_likelihood_score(x, t, args)


def sample_gibbsddrm(
    key: PRNGKeyArray,
    model: JointModel,
    prior: AbstractSourcePrior,
    config: GibbsDDRMConfig = GibbsDDRMConfig(),
    init_lens: Mapping[str, Array] | None = None,
) -> GibbsDDRMResult:
    """One joint ``(lens, source)`` draw by the continuous-time GibbsDDRM scheme.

    Starting from ``x_1 ~ N(0, sigma_max^2 I)`` and a lens drawn from its prior (or
    ``init_lens``), every reverse interval ``[t_{k+1}, t_k]`` does:

    1. the Tweedie estimate ``x0 = x + sigma(t_k)^2 score_prior(x, t_k)`` (Efron 2011);
    2. if ``t_k <= lens_start``: ``lens_steps`` MALA moves of the lens in NumPyro's
       unconstrained space, targeting the noise-aware posterior
       ``p(theta) N(y; A_theta x0, sigma_n^2 + r_t^2 diag(A_theta A_theta^T))`` with the
       Tweedie-error variance ``r_t^2 = sigma_t^2 v / (sigma_t^2 + v)`` of a Gaussian prior of
       pixel variance ``v`` (Song et al. 2023, PiGDM, eq. 7; ``v`` is the prior's
       ``pixel_variance()`` if it has one, else the second moment of the unmasked data minus
       the noise variance, a proxy since lensing conserves surface brightness);
       ``diag(A A^T)`` is a Rademacher-probe estimate held fixed within the interval, and the
       MALA metric is the local Hessian of that potential;
    3. one step of the guided reverse SDE with the *new* lens, by
       :class:`~blindlens.diffusion_sde.ReverseDiffusion` (diffrax): Euler-Maruyama
       ``x <- x + g^2 (score_prior + score_lik) dt + g sqrt(dt) z``, or for scores that are
       affine in ``x`` and stiff (CLA) the IMEX step with ``score_lik`` implicit
       (:class:`~blindlens.diffusion_sde.LinearlyImplicitEulerMaruyama`); ``score_lik`` from
       ``config.guidance`` with the probe estimate of ``diag(A A^T)``.

    After the last interval the source is Tweedie-denoised and the lens gets
    ``final_lens_steps`` MALA moves against the plain likelihood ``N(y; A_theta s, sigma_n^2)``,
    so the returned lens is a draw of ``p(theta | s, y)`` given the returned source. The MALA
    step size adapts along the trajectory (Robbins-Monro on ``log eps``).

    This is not a Markov chain: one trajectory is one (approximate) joint posterior draw; use
    ``jax.vmap`` over keys for many. Cost: ``config.num_score_evals`` prior-score evaluations
    plus those of the guidance (0 for CLA, 1 VJP per step for PiGDM).

    Parameters
    ----------
    key
        PRNG key.
    model
        The joint model (:func:`blindlens.numpyro_model.joint_model`).
    prior
        The source prior.
    config
        :class:`GibbsDDRMConfig`.
    init_lens
        Optional constrained starting values of the lens sites.
    """
    if config.guidance is None:
        from .likelihood_score import CLA

        guidance = CLA()
    else:
        guidance = config.guidance
    space = _LensSpace(model.lens_model)
    sde = prior.sde
    noise, mask = model.noise, model.mask
    k_lens, k_x, k_path, k_final = jr.split(key, 4)
    values = space.prior_draw(k_lens) if init_lens is None else init_lens
    u = space.unconstrain(values)
    # the data the source explains (the image less any deflector light, which moves with the lens)
    data = model.source_data(space.log_prior_and_lens(u)[0])
    dtype = data.dtype
    n_obs = jnp.maximum(jnp.sum(mask), 1)
    pixel_variance = getattr(prior, "pixel_variance", None)
    if callable(pixel_variance):
        v = jnp.asarray(pixel_variance(), dtype)
    else:
        v = jnp.sum(jnp.where(mask, data**2 - noise**2, 0.0)) / n_obs
        v = jnp.maximum(v, 1e-6 * jnp.max(jnp.where(mask, data**2, 0.0)) + 1e-30)
    ts = reverse_time_grid(config.num_steps, config.t_final)
    solver = guidance.default_solver if guidance.affine_in_x(prior) else "euler"
    if solver == "imex":  # the prior score is explicit (reused from the Tweedie estimate)
        integrator = ReverseDiffusion(sde, _precomputed_prior_score, prior.shape, solver,
                                      stiff_score_fn=_step_likelihood_score)
    else:
        integrator = ReverseDiffusion(sde, _step_posterior_score, prior.shape, solver)
    x = sde.prior_sample(k_x, prior.shape).astype(dtype)

    def potential(u, x0, extra_var):
        lens, logp = space.log_prior_and_lens(u)
        resid = model.source_data(lens) - model.operator(lens, masked=True)(x0)
        var = noise**2 + extra_var
        ll = -0.5 * jnp.sum(jnp.where(mask, resid**2 / var, 0.0))
        out = -(logp + ll)
        return jnp.where(jnp.isfinite(out), out, jnp.inf)

    def operator_at(u):
        return model.operator(space.log_prior_and_lens(u)[0], masked=True)

    def data_at(u):
        return model.source_data(space.log_prior_and_lens(u)[0])

    def body(carry, inputs):
        x, u, log_eps, acc_sum, n_upd = carry
        t0, t1, k = inputs
        k_lens, k_probe, k_noise = jr.split(k, 3)
        s_prior = prior.score(x, t0)
        sig2 = sde.sigma(t0) ** 2
        x0 = x + sig2 * s_prior

        def update(args):
            u, log_eps = args
            r2 = sig2 * v / (sig2 + v)
            extra = r2 * jax.lax.stop_gradient(_probe_diag_aat(operator_at(u), k_probe, config.num_probes, dtype))
            u_new, alpha = _mala(k_lens, u, lambda w: potential(w, x0, extra), config.lens_steps, log_eps)
            log_eps = log_eps + 0.5 * (alpha - config.target_accept)
            return u_new, log_eps, alpha, jnp.ones((), dtype)

        def skip(args):
            u, log_eps = args
            return u, log_eps, jnp.zeros((), dtype), jnp.zeros((), dtype)

        active = (t0 <= config.lens_start) & (config.lens_steps > 0)
        u, log_eps, alpha, did = jax.lax.cond(active, update, skip, (u, log_eps))
        op = operator_at(u)
        probed = _ProbedOperator(op, _probe_diag_aat(op, k_probe, config.num_probes, dtype))
        problem = guidance.prepare(prior, probed, data_at(u), _staged(noise))
        x = integrator.step(k_noise, x, t0, t1, (guidance, problem, s_prior))
        return (x, u, log_eps, acc_sum + alpha, n_upd + did), None

    log_eps0 = jnp.log(jnp.asarray(config.step_size, dtype))
    carry = (x, u, log_eps0, jnp.zeros((), dtype), jnp.zeros((), dtype))
    (x, u, log_eps, acc_sum, n_upd), _ = jax.lax.scan(
        body, carry, (ts[:-1], ts[1:], jr.split(k_path, config.num_steps))
    )
    op = operator_at(u)
    probed = _ProbedOperator(op, _probe_diag_aat(op, k_final, config.num_probes, dtype))
    problem = guidance.prepare(prior, probed, data_at(u), _staged(noise))
    x = x + sde.sigma(ts[-1]) ** 2 * guidance.posterior_score(x, ts[-1], problem)
    u, alpha = _mala(k_final, u, lambda w: potential(w, x, 0.0), config.final_lens_steps, log_eps)
    final = float(config.final_lens_steps > 0)
    return GibbsDDRMResult(
        lens=space.constrain(u),
        source=x,
        accept_rate=(acc_sum + final * alpha) / jnp.maximum(n_upd + final, 1.0),
        step_size=jnp.exp(log_eps),
    )


# --------------------------------------------------------------------------------------------
# the lens block: NUTS with a curvature metric


class LensNUTS(NUTS):
    """NumPyro NUTS for the lens block, with the local curvature of ``p(theta | s, y)`` as its metric.

    Lens parameters live on very different scales once the source is given (posterior sds from
    ``1e-3`` arcsec for ``theta_E`` to ``3e-2`` for poorly constrained ellipticity directions, with
    strong correlations), and a Gibbs run has far too few warm-up transitions for NumPyro's
    windowed mass-matrix adaptation: with the identity metric the step size collapses to the
    tightest direction and every transition saturates the tree depth while moving
    ``theta_E`` by a third of its conditional sd. This kernel instead uses the dense inverse
    mass matrix

        M^{-1} = |H|^{-1},   H = -d^2 log p(theta, y | s) / du^2

    (``u``: NumPyro's unconstrained lens coordinates; ``|H|`` has the absolute eigenvalues of
    ``H``, floored at ``1e-2``: the SoftAbs map of Betancourt 2013, so the metric is positive
    definite away from the mode too). ``H`` is recomputed from the current lens and source at
    **every warm-up transition** (the source moves between them, and a chain started away from the
    posterior needs the curvature where it is now) and frozen afterwards, so the sampling phase is
    an ordinary fixed-metric NUTS chain, reversible with respect to ``p(theta | s, y)``. The step
    size starts at ``0.9`` (with a curvature metric the good step is O(1)) and adapts through
    warm-up by a Robbins-Monro update of ``log eps`` towards ``target_accept_prob`` with gain
    ``1 / sqrt(k + 1)`` (Andrieu & Thoms 2008, Stat. Comput. 18, 343); NumPyro's dual averaging
    (Hoffman & Gelman 2014, §3.2) shrinks towards ``log(10 eps_0)`` and, in the 20-transition
    warm-ups of a Gibbs run, was measured to end at step sizes 3.5-4.3 where every later proposal
    was rejected.

    Measured (``benchmarks/lens_block.py``, docs/joint_inference.md "Lens block"): on a
    calibration-study system 3 instead of 30.5 leapfrog steps per transition and a per-sweep
    ``theta_E`` move of 2.3e-3 instead of 3.5e-4 (its conditional sd is 1.1e-3).

    Parameters
    ----------
    model
        The :class:`~blindlens.numpyro_model.JointModel` (its ``log_likelihood`` gives ``H``).
    curvature_metric
        ``False`` gives plain NumPyro NUTS (identity metric, windowed adaptation as configured).
    step_size
        Initial leapfrog step size (in units of the metric).
    **kwargs
        Passed to :class:`numpyro.infer.NUTS` (``target_accept_prob``, ``max_tree_depth``, ...).
        With the curvature metric, ``dense_mass=True`` (default) uses the full ``|H|^{-1}`` and
        ``dense_mass=False`` its diagonal (the marginal variances).
    """

    def __init__(self, model: JointModel, *, curvature_metric: bool = True, step_size: float = 0.9, **kwargs):
        dense = True
        if curvature_metric:
            if kwargs.get("adapt_mass_matrix") or kwargs.get("inverse_mass_matrix") is not None:
                raise ValueError(
                    "LensNUTS(curvature_metric=True) sets the mass matrix itself; pass "
                    "curvature_metric=False to use adapt_mass_matrix or inverse_mass_matrix."
                )
            dense = kwargs.pop("dense_mass", True)
            if not isinstance(dense, bool):
                raise ValueError(
                    f"LensNUTS(curvature_metric=True) takes dense_mass=True (the full curvature metric) or False "
                    f"(its diagonal), got {dense!r}; pass curvature_metric=False for NumPyro's structured mass."
                )
            kwargs.update(adapt_mass_matrix=False, dense_mass=dense, adapt_step_size=False)
        super().__init__(model, step_size=step_size, **kwargs)
        self._joint = model
        self._curvature = curvature_metric
        self._dense_curvature = dense
        self._space = _LensSpace(model.lens_model)
        self._num_warmup = 0

    def curvature_inverse_mass(self, z: Mapping[str, Array], source: SourceImage) -> Float[Array, "d d"]:
        """``|H|^{-1}`` at unconstrained lens values ``z`` (site -> value) given ``source``."""
        flat, _ = ravel_pytree({n: jnp.asarray(z[n]) for n in self._space.names})

        def potential(u):
            lens, log_prior = self._space.log_prior_and_lens(u)
            return -(log_prior + self._joint.log_likelihood(lens, source))

        vec, lam = _metric(jax.hessian(potential)(flat))
        return (vec / lam) @ vec.T

    def _curvature_metric(self, z, source):
        """The inverse mass matrix NUTS uses: ``|H|^{-1}``, or its diagonal with ``dense_mass=False``."""
        inv = self.curvature_inverse_mass(z, source)
        return inv if self._dense_curvature else jnp.diag(inv)

    def _source(self, model_kwargs):
        sites = (model_kwargs or {}).get(GIBBS_SITES_KWARG, {})
        if SOURCE_SITE not in sites:
            raise ValueError("LensNUTS needs the source from Gibbs conditioning; use it inside BlindLensGibbs.")
        return sites[SOURCE_SITE]

    def _key(self):
        return tuple(sorted(self._space.names))

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        self._num_warmup = int(num_warmup)
        if not self._curvature or not init_params:
            return super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        saved = self._inverse_mass_matrix
        self._inverse_mass_matrix = {self._key(): self._curvature_metric(init_params, self._source(model_kwargs))}
        try:
            return super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        finally:
            self._inverse_mass_matrix = saved

    def sample(self, state, model_args, model_kwargs):
        if self._curvature and self._num_warmup > 0:
            source = self._source(model_kwargs)

            def recompute(state):
                inv = {self._key(): self._curvature_metric(state.z, source)}
                dense = [self._key()] if self._dense_curvature else []
                inv, sqrt, sqrt_inv = _initialize_mass_matrix(state.z, inv, dense)
                adapt = state.adapt_state._replace(
                    inverse_mass_matrix=inv, mass_matrix_sqrt=sqrt, mass_matrix_sqrt_inv=sqrt_inv
                )
                return state._replace(adapt_state=adapt)

            warming = state.i < self._num_warmup
            state = jax.lax.cond(warming, recompute, lambda s: s, state)
            new = super().sample(state, model_args, model_kwargs)
            # Robbins-Monro on log(step size) towards the target acceptance, gain 1/sqrt(k+1)
            eps = new.adapt_state.step_size
            log_eps = jnp.log(eps) + (new.accept_prob - self._target_accept_prob) / jnp.sqrt(state.i + 1.0)
            log_eps = jnp.clip(log_eps, jnp.log(1e-3), jnp.log(2.0))
            eps = jnp.where(warming, jnp.exp(log_eps), eps).astype(eps.dtype)
            return new._replace(adapt_state=new.adapt_state._replace(step_size=eps))
        return super().sample(state, model_args, model_kwargs)


# --------------------------------------------------------------------------------------------
# the Gibbs kernel


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
    """

    z: dict
    rng_key: Array
    num_score_evals: Array


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
    """

    sample_field = "z"

    def __init__(self, model: JointModel, source_sampler: SourceSampler, refresher=None):
        self._joint = model
        self._sampler = source_sampler
        self._refresher = refresher
        self._lens_sites = lens_site_names(model.lens_model)
        sweep_cost = source_sampler if refresher is None else refresher
        self._evals = int(getattr(sweep_cost, "num_score_evals", 0))

    def _operator_and_data(self, lens_values):
        lens = lens_from_values(self._joint.lens_model, lens_values)
        return self._joint.operator(lens, masked=True), self._joint.source_data(lens)

    def draw(self, key, lens_values):
        """A fresh source draw given the lens (used for the first state)."""
        op, data = self._operator_and_data(lens_values)
        return self._sampler(key, op, data, _staged(self._joint.noise))

    def move(self, key, lens_values, current):
        """One sweep's source update: the refresher's move from ``current``, or a fresh draw."""
        if self._refresher is None:
            return self.draw(key, lens_values)
        op, data = self._operator_and_data(lens_values)
        return self._refresher(key, op, data, _staged(self._joint.noise), current)

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        if not init_params or SOURCE_SITE not in init_params:
            raise ValueError("SourceBlock needs an initial source; use it inside BlindLensGibbs.")
        return SourceBlockState(
            {SOURCE_SITE: jnp.asarray(init_params[SOURCE_SITE])}, rng_key, jnp.zeros((), jnp.int32)
        )

    def sample(self, state, model_args, model_kwargs):
        cond = (model_kwargs or {}).get(GIBBS_SITES_KWARG, {})
        missing = [n for n in self._lens_sites if n not in cond]
        if missing:
            raise ValueError(f"SourceBlock did not receive the lens sites {missing}; run it inside Gibbs.")
        key, sub = jr.split(state.rng_key)
        source = self.move(sub, {n: cond[n] for n in self._lens_sites}, state.z[SOURCE_SITE])
        return SourceBlockState({SOURCE_SITE: source}, key, state.num_score_evals + self._evals)

    def refresh(self, state, model_args, model_kwargs):
        return state

    def wrap_model(self, wrapper):
        return self

    def get_constrain_fn(self, model_args, model_kwargs):
        return lambda z: z

    def get_diagnostics_str(self, state):
        return ""


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
        chain.
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
        shapelet pre-fit instead of prior draws (:mod:`blindlens.parametric_prefit`).
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
        ``source_refresh_sigma`` set to a number or a custom ``source_sampler``.
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
        source_grid: PixelGrid | None = None,
        supersampling: int = 1,
        operator_factory: Callable | None = None,
        lens_kernel: Callable | None = None,
        lens_search: EvidenceSearchConfig | None = None,
        lens_prefit=None,
        source_refresh_sigma: float | str | None = "auto",
        split_gibbs=None,
        init_strategy: Callable | None = None,
        target_accept_prob: float | None = None,
        max_tree_depth: int | tuple[int, int] | None = None,
        dense_mass: bool | None = None,
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
        self.source_block = SourceBlock(self.joint_model, source_sampler, refresher)
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
        super().__init__([(self.source_block, [SOURCE_SITE]), (lens_block, None)])

    sample_field = "sites"

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
        from .gaussian_prior import GaussianSourcePrior

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
        from .gaussian_prior import GaussianSourcePrior
        from .lens_initialization import EvidenceSearchConfig, default_search_basis, search_lens_by_evidence

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
            lens = lens_from_values(jm.lens_model, values)
            resid = (jm.image - jm.predict(lens, source)) / jm.noise
            return jnp.sum(jnp.where(jm.mask, resid**2, 0.0))

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
        if self.warm_start_tries == 1:
            return sample_gibbsddrm(key, self.joint_model, self.prior, config, init_lens)
        jm = self.joint_model
        keys = jr.split(key, self.warm_start_tries)
        if init_lens is None:
            draws = jax.lax.map(lambda k: sample_gibbsddrm(k, jm, self.prior, config), keys)
        else:
            space = _LensSpace(jm.lens_model)
            given = space.complete(init_lens)
            starts = jax.vmap(lambda k: space.prior_draw(jr.fold_in(k, 1)))(keys)
            starts = {n: starts[n].at[0].set(given[n].astype(starts[n].dtype)) for n in space.names}
            draws = jax.lax.map(lambda a: sample_gibbsddrm(a[0], jm, self.prior, config, a[1]), (keys, starts))

        def chi2(lens_values, source):
            lens = lens_from_values(jm.lens_model, lens_values)
            return -2.0 * jm.log_likelihood(lens, source)  # up to a lens-free constant

        fit = jax.vmap(chi2)(draws.lens, draws.source)
        best = jnp.argmin(jnp.where(jnp.isfinite(fit), fit, jnp.inf))
        return jax.tree.map(lambda v: v[best], draws)

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
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
