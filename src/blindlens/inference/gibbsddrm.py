"""The continuous-time GibbsDDRM sampler: one joint ``(lens, source)`` draw per reverse trajectory.

:func:`sample_gibbsddrm` / :class:`GibbsDDRMConfig`
    The continuous-time GibbsDDRM scheme (Murata et al. 2023; Barco et al. 2025): lens
    parameters move by preconditioned MALA steps *between* reverse-SDE intervals, against a
    noise-aware likelihood at diffusion time ``t``; one trajectory gives one joint draw. It is
    a sampler of its own and, inside :class:`~blindlens.gibbs_kernel.BlindLensGibbs`, the warm
    start of every chain. Known weakness: started far from the truth it can settle on a wrong,
    self-consistent lens/source pair (at the prior bounds in the tests); use several chains and
    check R-hat.

The SoftAbs metric of its MALA steps (:func:`_metric`) is also the curvature metric of
:class:`~blindlens.lens_block.LensNUTS`.

References
----------
Murata et al. 2023, "GibbsDDRM: A Partially Collapsed Gibbs Sampler for Solving Blind Inverse
Problems with Denoising Diffusion Restoration", ICML (lens updates between denoising steps,
Tweedie plug-in, updates only in the late part of the reverse process).
Barco et al. 2025, arXiv:2511.04792 (continuous-time variant with a score-based source prior).
Roberts & Tweedie 1996, Bernoulli 2, 341 (MALA); Girolami & Calderhead 2011, JRSS B 73, 123
(position-dependent preconditioning). Betancourt 2013, "A General Metric for Riemannian Manifold
HMC" (SoftAbs). Song et al. 2021, ICLR (reverse VE SDE, Euler-Maruyama predictor).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Float, PRNGKeyArray, SourceImage
from ..physics.linear_operator import AbstractLinearOperator
from ..prior.diffusion_sde import ReverseDiffusion, reverse_time_grid
from ..prior.source_prior import AbstractSourcePrior
from ..source.likelihood_score import data_pixel_variance
from .lens_space import LensSpace as _LensSpace
from .source_moves import _staged

if TYPE_CHECKING:
    from .numpyro_model import JointModel

__all__ = ["GibbsDDRMConfig", "GibbsDDRMResult", "sample_gibbsddrm", "best_of_gibbsddrm"]


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


def _probe_diag_aat(operator: AbstractLinearOperator, key: PRNGKeyArray, num_probes: int, dtype):
    z = jr.rademacher(key, (num_probes, *operator.source_shape), dtype=dtype)
    return jnp.mean(jax.vmap(operator)(z) ** 2, axis=0)


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
        from ..source.likelihood_score import CLA

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
    pixel_variance = getattr(prior, "pixel_variance", None)
    if callable(pixel_variance):
        v = jnp.asarray(pixel_variance(), dtype)
    else:
        v = data_pixel_variance(data, noise, mask).astype(dtype)
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


def best_of_gibbsddrm(
    key: PRNGKeyArray,
    model,
    prior: AbstractSourcePrior,
    config: GibbsDDRMConfig,
    tries: int,
    init_lens: Mapping[str, Array] | None = None,
) -> GibbsDDRMResult:
    """The best of ``tries`` continuous-time draws by residual chi^2: a chain's warm start.

    Each try is one :func:`sample_gibbsddrm` trajectory from its own prior draw of the lens; the
    try whose ``(lens, source)`` has the smallest ``chi^2 = sum_unmasked ((y - A_theta s) / sigma)^2``
    (ranked as ``-2 log p(y | theta, s)``, equal up to a lens-free constant) is returned. A
    trajectory that settled on a wrong lens with a co-adapted source fits the data visibly worse,
    so the selection discards such tries whenever one of them found the right basin. With
    ``init_lens`` the first try starts there and the others from prior draws (trajectories from one
    far start all end at the same wrong lens, so repeating it cannot rescue a bad guess). Pure
    (``vmap``-able); ``tries == 1`` is one trajectory from ``key`` itself.
    """
    from .numpyro_model import lens_from_values

    if int(tries) < 1:
        raise ValueError(f"tries must be >= 1, got {tries}.")
    if int(tries) == 1:
        return sample_gibbsddrm(key, model, prior, config, init_lens)
    keys = jr.split(key, int(tries))
    if init_lens is None:
        draws = jax.lax.map(lambda k: sample_gibbsddrm(k, model, prior, config), keys)
    else:
        space = _LensSpace(model.lens_model)
        given = space.complete(init_lens)
        starts = jax.vmap(lambda k: space.prior_draw(jr.fold_in(k, 1)))(keys)
        starts = {n: starts[n].at[0].set(given[n].astype(starts[n].dtype)) for n in space.names}
        draws = jax.lax.map(lambda a: sample_gibbsddrm(a[0], model, prior, config, a[1]), (keys, starts))

    def fit(lens_values, source):
        return -2.0 * model.log_likelihood(lens_from_values(model.lens_model, lens_values), source)

    chi2 = jax.vmap(fit)(draws.lens, draws.source)
    best = jnp.argmin(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf))
    return jax.tree.map(lambda v: v[best], draws)
