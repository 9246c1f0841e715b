"""Likelihood scores ``grad_{x_t} log p_t(y | x_t)`` for guiding a diffusion source prior.

For data ``y = A s + n`` with ``n ~ N(0, Sigma)`` (``Sigma`` diagonal, image units) and the VE
diffusion ``x_t = s + sigma_t z``, the posterior score at time ``t`` splits as

    grad log p_t(x_t | y) = grad log p_t(x_t) + grad log p_t(y | x_t),

and ``p_t(y | x_t) = int p(y | s) p(s | x_t) ds`` is intractable for a non-Gaussian prior. Every
class here approximates it through one interface:

1. ``problem = score.prepare(prior, operator, data, noise_sigma)`` (once per observation and
   lens: noise weights, ``diag(A A^T)``, exact posteriors, ...), a pytree;
2. ``score.posterior_score(x_t, t, problem)`` (the drift the sampler needs; reuses the denoiser
   evaluation where it can) or ``score.likelihood_score(x_t, t, problem)``.

``score(x_t, t, prior, operator, data, noise_sigma)`` does both in one call. Everything is a pure
function of pytrees: a new observation or lens of the same shape does not retrace.

Approximations (``W = Sigma^{-1}``, zero at masked pixels; ``x0_hat`` Tweedie's mean):

* :class:`CLA` (Adam et al. 2022, arXiv:2211.03812, App. A):
  ``N(y; A x_t, Sigma + sigma_t^2 diag(A A^T))``; no network Jacobian.
* :class:`PiGDM` (Song, Vahdat, Mardani & Kautz 2023, ICLR, eq. 7-8):
  ``N(y; A x0_hat, Sigma + r_t^2 A A^T)`` with ``r_t^2 = sigma_t^2 v / (sigma_t^2 + v)``, the score
  taken through ``x0_hat`` by a vector-Jacobian product; ``A A^T`` diagonal or full (CG).
* :class:`CalibratedTweedie` (this library): the full second-order Tweedie likelihood
  ``N(y; A x0_hat, Sigma + sigma_t^2 A J A^T)`` with ``J = d x0_hat / d x_t`` (so
  ``sigma_t^2 J = Cov[s | x_t]``, Efron 2011, JASA 106, 1602), applied matrix-free by
  Jacobian-vector products and solved by conjugate gradients. It equals the true
  ``p_t(y | x_t)`` whenever ``p(s | x_t)`` is Gaussian, i.e. exactly for a Gaussian prior.
* :class:`ExactGaussianLikelihoodScore`: the analytic answer for the priors of
  :mod:`blindlens.gaussian_prior` (difference of exact noised posterior and prior scores).
* :class:`TemperedLikelihoodScore`: any of the above times a factor; a deliberately wrong
  control for tests (factor 2), or likelihood tempering.
"""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array, Float, Image, SourceImage
from ..physics.linear_operator import AbstractLinearOperator, conjugate_gradient
from ..prior.gaussian_prior import (
    GaussianMixtureSourcePrior,
    GaussianSourcePrior,
    _check_problem,
    inverse_noise_variance,
)
from ..prior.source_prior import AbstractSourcePrior
from . import GUIDANCE_NAMES

__all__ = [
    "LikelihoodProblem",
    "AbstractLikelihoodScore",
    "CLA",
    "PiGDM",
    "CalibratedTweedie",
    "ExactGaussianLikelihoodScore",
    "TemperedLikelihoodScore",
    "conjugate_gradient",
    "data_coverage",
    "GUIDANCE_NAMES",
    "guidance_by_name",
    "data_pixel_variance",
]


class LikelihoodProblem(eqx.Module):
    """Everything a likelihood score needs about one observation, as a pytree.

    Built by :meth:`AbstractLikelihoodScore.prepare`; optional entries are ``None`` when the
    score does not need them.

    Attributes
    ----------
    prior
        The source prior (its noised score and Tweedie denoiser).
    operator
        The linear forward operator ``A`` (lens + PSF for a fixed lens).
    data
        Observed image ``y``, ``(ny, nx)``.
    inv_var
        ``W = 1 / sigma_n^2`` per pixel, ``0`` where masked.
    diag_aat
        ``diag(A A^T)`` as an image, or ``None``.
    data_variance
        The PiGDM prior variance ``v`` (image units squared), or ``None``.
    coverage
        ``A^T W A 1`` as a source image (floored at 0): how much weight the data put on each source
        pixel, the diagonal preconditioner of PiGDM's source-plane solve; or ``None``.
    posterior
        Exact posterior (Gaussian priors only), or ``None``.
    """

    prior: AbstractSourcePrior
    operator: AbstractLinearOperator
    data: Image
    inv_var: Image
    diag_aat: Image | None = None
    data_variance: Float[Array, ""] | None = None
    posterior: eqx.Module | None = None
    coverage: SourceImage | None = None


def _base_problem(prior, operator, data, noise_sigma) -> LikelihoodProblem:
    _check_problem(prior.shape, operator, data)
    data = jnp.asarray(data)
    w = inverse_noise_variance(noise_sigma, operator.image_shape, operator).astype(data.dtype)
    return LikelihoodProblem(prior, operator, data, w)


def _excess_second_moment(data, noise_var, observed) -> Float[Array, ""]:
    """``sum over observed pixels of (y_i^2 - sigma_i^2)``: the data's second moment beyond the noise."""
    return jnp.sum(jnp.where(observed, data**2 - noise_var, 0.0))


def data_pixel_variance(data: Float[Array, "ny nx"], noise: Float[Array, "ny nx"] | float,
                        mask: Float[Array, "ny nx"]) -> Float[Array, ""]:
    """A source pixel variance read off the data: the mean excess second moment per observed pixel.

    ``v = mean_i (y_i^2 - sigma_i^2)`` over unmasked pixels, floored at ``1e-6 max y_i^2``. It is
    the estimate of :func:`_estimate_data_variance` with ``diag(A A^T) = 1`` per pixel (lensing
    conserves surface brightness), so it needs no operator: what GibbsDDRM's lens moves and the
    evidence search's source scale use, where the lens (hence ``A``) is still unknown.

    Parameters
    ----------
    data
        Image (the deflector light removed, if any) [image units].
    noise
        Noise sigma per pixel, map or scalar [image units].
    mask
        ``True`` (or 1) where a pixel is observed.

    Returns
    -------
    Scalar variance [image units^2], > 0.
    """
    observed = jnp.asarray(mask).astype(bool)
    n = jnp.maximum(jnp.sum(observed), 1)
    v = _excess_second_moment(data, jnp.asarray(noise) ** 2, observed) / n
    return jnp.maximum(v, 1e-6 * jnp.max(jnp.where(observed, data**2, 0.0)) + 1e-30)


def _estimate_data_variance(problem: LikelihoodProblem, num_probes: int = 32) -> Float[Array, ""]:
    """PiGDM's ``v``: the prior's per-pixel variance if it exposes one, else a moment estimate.

    The moment estimate uses ``E[y_i^2] = (A S A^T)_ii + sigma_i^2 ~ v diag(A A^T)_i + sigma_i^2``
    for an isotropic prior ``S = v I`` (second moment about zero, which includes the source's
    mean brightness), summed over the unmasked pixels:
    ``v = sum_i W_i>0 (y_i^2 - sigma_i^2) / tr(M A A^T)``, floored at a tiny positive value. The
    trace is estimated with ``num_probes`` Rademacher probes, ``E_z |A^T M z|^2`` (Hutchinson
    1990, Commun. Stat. Simul. Comput. 19, 433; fixed key), so it costs ``num_probes`` adjoint
    calls instead of the exact ``diag(A A^T)``.
    """
    pixel_variance = getattr(problem.prior, "pixel_variance", None)
    if callable(pixel_variance):
        return jnp.asarray(pixel_variance())
    observed = problem.inv_var > 0
    noise_var = jnp.where(observed, 1.0 / jnp.where(observed, problem.inv_var, 1.0), 0.0)
    excess = _excess_second_moment(problem.data, noise_var, observed)
    probes = jax.random.rademacher(jax.random.key(0), (num_probes, *problem.data.shape), problem.data.dtype)
    probes = probes * observed.astype(problem.data.dtype)
    seen = jnp.mean(jax.vmap(lambda z: jnp.sum(problem.operator.adjoint(z) ** 2))(probes))
    return jnp.maximum(excess / seen, 1e-12)


class AbstractLikelihoodScore(eqx.Module):
    """Interface of a (possibly approximate) likelihood score for a linear forward model.

    Subclasses implement :meth:`likelihood_score` and usually :meth:`prepare`; those that
    evaluate the denoiser anyway override :meth:`posterior_score` to reuse it.
    """

    def prepare(
        self,
        prior: AbstractSourcePrior,
        operator: AbstractLinearOperator,
        data: Image,
        noise_sigma: Float[Array, "..."] | float,
    ) -> LikelihoodProblem:
        """Precompute the per-observation quantities; pixels with ``noise_sigma = inf`` are masked."""
        return _base_problem(prior, operator, data, noise_sigma)

    @abc.abstractmethod
    def likelihood_score(self, x: SourceImage, t: Float[Array, ""], problem: LikelihoodProblem) -> SourceImage:
        """``grad_{x_t} log p_t(y | x_t)`` (approximate), shape ``(sy, sx)``."""

    def posterior_score(self, x: SourceImage, t: Float[Array, ""], problem: LikelihoodProblem) -> SourceImage:
        """Prior score plus likelihood score: the drift of the guided reverse diffusion."""
        return problem.prior.score(x, t) + self.likelihood_score(x, t, problem)

    def log_likelihood_and_scores(
        self, x: SourceImage, t: Float[Array, ""], problem: LikelihoodProblem
    ) -> tuple[Float[Array, ""], SourceImage, SourceImage]:
        """``(log p~_t(y | x_t) + c_t, prior score, likelihood score)`` at one state.

        The approximate log-likelihood whose gradient :meth:`likelihood_score` is, up to a
        constant ``c_t`` that may depend on ``t`` but not on ``x_t``: what twisted sequential
        Monte Carlo (:mod:`blindlens.twisted_smc`) needs to weight particles at a common time.
        Scores whose covariance depends on ``x_t`` (:class:`CalibratedTweedie`) cannot provide it
        without a log-determinant per particle and raise.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not expose its log-likelihood; twisted SMC supports PiGDM, CLA, "
            "ExactGaussianLikelihoodScore and TemperedLikelihoodScore of those."
        )

    @property
    def default_solver(self) -> str:
        """The reverse-SDE solver ``solver="auto"`` picks for this score: ``"euler"``, or
        ``"imex"`` for scores that are stiff under explicit steps and affine in ``x_t``."""
        return "euler"

    def affine_in_x(self, prior: AbstractSourcePrior) -> bool:
        """Whether :meth:`likelihood_score` is affine in ``x_t`` with a symmetric negative
        semi-definite linear part for this prior (then the sampler may treat it implicitly,
        ``solver="imex"``)."""
        return False

    def network_passes(self, x: SourceImage, t: Float[Array, ""], problem: LikelihoodProblem) -> Float[Array, ""]:
        """Passes through the prior network for one :meth:`posterior_score` call.

        A forward evaluation, a Jacobian-vector product and a vector-Jacobian product count
        one pass each (on a CPU a JVP or VJP costs about 1.5-3 forward passes).
        """
        return jnp.asarray(1.0)

    def __call__(
        self,
        x_t: SourceImage,
        t: Float[Array, ""],
        prior: AbstractSourcePrior,
        operator: AbstractLinearOperator,
        data: Image,
        noise_sigma: Float[Array, "..."] | float,
    ) -> SourceImage:
        """``grad_{x_t} log p_t(y | x_t)``; prepares the problem on every call (convenience)."""
        return self.likelihood_score(x_t, t, self.prepare(prior, operator, data, noise_sigma))


class CLA(AbstractLikelihoodScore):
    """Convolved likelihood approximation (Adam et al. 2022, arXiv:2211.03812, App. A).

    ``p_t(y | x_t) ~ N(y; A x_t, Sigma + r_t^2 diag(A A^T))``, so
    ``grad = A^T [(y - A x_t) / (sigma_n^2 + r_t^2 diag(A A^T))]``, with ``r_t^2 = sigma_t^2``.

    Parameters
    ----------
    anneal_factor
        ``None`` (default, plain CLA) or ``a``: inflate to ``r_t^2 = sigma_t^2 ((1 + a)^2 t^4 + 1)``
        as the first author's tutorial does (``a = 7``, paper.md §2.4).
    """

    anneal_factor: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.anneal_factor is not None and self.anneal_factor < 0:
            raise ValueError(f"CLA anneal_factor must be >= 0 or None, got {self.anneal_factor}.")

    def prepare(self, prior, operator, data, noise_sigma) -> LikelihoodProblem:
        problem = _base_problem(prior, operator, data, noise_sigma)
        return eqx.tree_at(lambda p: p.diag_aat, problem, operator.diag_aat(), is_leaf=lambda v: v is None)

    def _weighted_residual(self, x, t, problem):
        r2 = problem.prior.sde.sigma(t) ** 2
        if self.anneal_factor is not None:
            r2 = r2 * ((1.0 + self.anneal_factor) ** 2 * t**4 + 1.0)
        w = problem.inv_var
        resid = problem.data - problem.operator(x)
        return resid, w / (1.0 + w * r2 * problem.diag_aat) * resid

    def likelihood_score(self, x, t, problem):
        return problem.operator.adjoint(self._weighted_residual(x, t, problem)[1])

    def log_likelihood_and_scores(self, x, t, problem):
        resid, w_resid = self._weighted_residual(x, t, problem)
        return -0.5 * jnp.sum(resid * w_resid), problem.prior.score(x, t), problem.operator.adjoint(w_resid)

    def affine_in_x(self, prior) -> bool:
        return True  # A^T W_eff (y - A x): linear part -A^T W_eff A

    @property
    def default_solver(self) -> str:
        # explicit Euler needs h * lambda_max(g^2 A^T W_eff A) < 2: > 3000 steps with lensing
        return "imex"

    def network_passes(self, x, t, problem):
        return jnp.asarray(1.0)


def _solve_whitened(operator, w, cov_apply, b_image, tol, maxiter):
    """``(Sigma + A M A^T)^{-1} b`` via CG on ``I + W^{1/2} A M A^T W^{1/2}`` (masked pixels: 0)."""
    sw = jnp.sqrt(w)

    def matvec(u):
        return u + sw * operator(cov_apply(operator.adjoint(sw * u)))

    u, iters = conjugate_gradient(matvec, sw * b_image, tol, maxiter)
    return sw * u, iters


def data_coverage(operator: AbstractLinearOperator, w: Image) -> SourceImage:
    """``max(A^T W A 1, 0)``: the data weight on each source pixel, a diagonal stand-in for ``A^T W A``.

    The row sums of ``A^T W A`` (one forward and one adjoint call). With the non-negative bilinear
    weights and a non-negative PSF they bound its diagonal from above and follow it where a source
    pixel is seen many times (near the critical curves) or not at all; measured as the
    preconditioner of :func:`_solve_source_plane` they beat the exact diagonal (Jacobi) too
    (docs/performance.md).
    """
    ones = jnp.ones(operator.source_shape, w.dtype)
    return jnp.maximum(operator.adjoint(w * operator(ones)), 0.0)


def _solve_source_plane(operator, w, r2, resid, coverage, tol, maxiter):
    """``A^T K^{-1} r`` and ``r^T K^{-1} r`` for ``K = Sigma + r2 A A^T``, solved in the source plane.

    Woodbury: ``K^{-1} = W - W A H^{-1} A^T W`` with ``H = I / r2 + A^T W A``, so with
    ``H z = A^T W r`` the guidance is ``A^T K^{-1} r = z / r2`` and the quadratic form is
    ``r^T K^{-1} r = min_z (r - A z)^T W (r - A z) + z^T z / r2``, evaluated at the solve's ``z``: a sum
    of two positive terms whose error is second order in the solve's (the equal form
    ``r^T W r - (A^T W r)^T z`` cancels to first order where the data dominate, and its error spoiled
    twisted SMC's weights). ``H`` is solved by conjugate gradients preconditioned with
    ``1 / r2 + coverage``; each iteration costs one forward and one adjoint call, as the image-plane
    solve's does, but converges in a fraction of the iterations where the data dominate
    (``r2 A A^T >> Sigma``, the high-noise half of a reverse diffusion). Returns
    ``(guidance, quadratic form, iterations)``.
    """
    inv_r2 = 1.0 / r2
    b = operator.adjoint(w * resid)

    def matvec(z):
        return inv_r2 * z + operator.adjoint(w * operator(z))

    z, iters = conjugate_gradient(matvec, b, tol, maxiter, preconditioner=1.0 / (inv_r2 + coverage))
    misfit = resid - operator(z)
    return z * inv_r2, jnp.sum(w * misfit * misfit) + inv_r2 * jnp.vdot(z, z), iters


def _tweedie_linearized(prior, x, t, transpose: bool):
    """Prior score, Tweedie mean and ``J = d x0_hat / d x_t`` as linear maps.

    ``x0_hat = x + sigma_t^2 s(x, t)`` and ``J v = v + sigma_t^2 (d s / d x) v`` are formed from the
    score (one linearised pass), not by differencing ``x0_hat - x``: that loses all precision in
    float32 at ``sigma_t ~ 1e-3``. Returns ``(score, x0_hat, jvp, vjp)`` (``vjp`` by transposing the
    linearisation, i.e. reverse mode, when ``transpose``).
    """
    sigma2 = prior.sde.sigma(t) ** 2
    score, dscore = jax.linearize(lambda z: prior.score(z, t), x)
    x0 = x + sigma2 * score

    def jvp(v):
        return v + sigma2 * dscore(v)

    if not transpose:
        return score, x0, jvp, None
    dscore_t = jax.linear_transpose(dscore, x)

    def vjp(g):
        return g + sigma2 * dscore_t(g)[0]

    return score, x0, jvp, vjp


class PiGDM(AbstractLikelihoodScore):
    """Pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz 2023, ICLR, eq. 7-8).

    ``p(s | x_t) ~ N(x0_hat, r_t^2 I)`` with ``r_t^2 = sigma_t^2 v / (sigma_t^2 + v)`` (the
    Tweedie covariance of an isotropic prior of variance ``v``), hence
    ``grad = J^T A^T (Sigma + r_t^2 A A^T)^{-1} (y - A x0_hat)``, ``J = d x0_hat / d x_t`` applied as a
    vector-Jacobian product.

    Parameters
    ----------
    data_variance
        ``v`` in image units squared; ``None`` (default) takes the prior's ``pixel_variance()``
        when it has one, otherwise a moment estimate from the data (see
        ``_estimate_data_variance``). The original paper fixes ``v = 1``, which assumes
        unit-variance data.
    covariance
        ``"full"`` (default, the paper's formula): ``r_t^2 A A^T`` solved by conjugate gradients
        (operator calls only, no extra network passes). ``"diag"``: ``r_t^2 diag(A A^T)``, the
        CLA-style shortcut; with lensing it over-weights the data so much that the reverse SDE
        becomes stiff (NaN at 1000 Euler steps on the 16x16 SIS test problem).
    cg_space
        Where ``covariance="full"`` is solved: ``"source"`` (default) by the Woodbury identity in the
        source plane, with a diagonal preconditioner (:func:`data_coverage`); ``"image"`` (before
        2026-12-07) by plain conjugate gradients on the whitened image-plane system. Both converge
        to the same guidance; on a 96 x 96 lenstronomy system the source-plane solve's guidance
        error after 100 iterations at ``r_t^2 W A A^T ~ 500`` (the start of a reverse diffusion) was
        5% against 88% (docs/performance.md).
    cg_tol, cg_maxiter
        CG controls for ``covariance="full"`` (relative residual of the solved system; the most
        iterations per step).
    """

    data_variance: float | None = eqx.field(static=True, default=None)
    covariance: Literal["diag", "full"] = eqx.field(static=True, default="full")
    cg_space: Literal["source", "image"] = eqx.field(static=True, default="source")
    cg_tol: float = eqx.field(static=True, default=1e-3)
    cg_maxiter: int = eqx.field(static=True, default=100)

    def __check_init__(self):
        if self.covariance not in ("diag", "full"):
            raise ValueError(f"PiGDM covariance must be 'diag' or 'full', got {self.covariance!r}.")
        if self.cg_space not in ("source", "image"):
            raise ValueError(f"PiGDM cg_space must be 'source' or 'image', got {self.cg_space!r}.")
        if self.data_variance is not None and not self.data_variance > 0:
            raise ValueError(f"PiGDM data_variance must be > 0 or None, got {self.data_variance}.")

    def prepare(self, prior, operator, data, noise_sigma) -> LikelihoodProblem:
        problem = _base_problem(prior, operator, data, noise_sigma)
        if self.covariance == "diag":
            problem = eqx.tree_at(lambda p: p.diag_aat, problem, operator.diag_aat(), is_leaf=lambda v: v is None)
        v = _estimate_data_variance(problem) if self.data_variance is None else jnp.asarray(self.data_variance)
        problem = eqx.tree_at(lambda p: p.data_variance, problem, v, is_leaf=lambda v: v is None)
        if self.covariance == "full" and self.cg_space == "source":
            problem = eqx.tree_at(lambda p: p.coverage, problem, data_coverage(operator, problem.inv_var),
                                  is_leaf=lambda v: v is None)
        return problem

    def _guidance(self, x0, t, problem):
        sigma2 = problem.prior.sde.sigma(t) ** 2
        v = problem.data_variance
        r2 = sigma2 * v / (sigma2 + v)
        w = problem.inv_var
        resid = problem.data - problem.operator(x0)
        if self.covariance == "full" and self.cg_space == "source":
            coverage = problem.coverage if problem.coverage is not None else data_coverage(problem.operator, w)
            guidance, quad, _ = _solve_source_plane(problem.operator, w, r2, resid, coverage,
                                                    self.cg_tol, self.cg_maxiter)
            return guidance, -0.5 * quad
        if self.covariance == "diag":
            kinv_r = w / (1.0 + w * r2 * problem.diag_aat) * resid
        else:
            kinv_r, _ = _solve_whitened(problem.operator, w, lambda s: r2 * s, resid, self.cg_tol, self.cg_maxiter)
        return problem.operator.adjoint(kinv_r), -0.5 * jnp.sum(resid * kinv_r)

    def _evaluate(self, x, t, problem):
        score, x0, _, jt = _tweedie_linearized(problem.prior, x, t, transpose=True)
        guidance, log_lik = self._guidance(x0, t, problem)
        return score, jt(guidance), log_lik

    def posterior_score(self, x, t, problem):
        score, lik, _ = self._evaluate(x, t, problem)
        return score + lik

    def likelihood_score(self, x, t, problem):
        return self._evaluate(x, t, problem)[1]

    def log_likelihood_and_scores(self, x, t, problem):
        # log N(y; A x0_hat, K) with K = Sigma + r_t^2 A A^T independent of x_t: the log-determinant
        # is the same for every particle at time t and is dropped
        score, lik, log_lik = self._evaluate(x, t, problem)
        return log_lik, score, lik

    def network_passes(self, x, t, problem):
        return jnp.asarray(2.0)


class CalibratedTweedie(AbstractLikelihoodScore):
    """Full second-order Tweedie likelihood, solved matrix-free: exact for a Gaussian prior.

    ``p_t(y | x_t) ~ N(y; A x0_hat, Sigma + A Cov[s|x_t] A^T)`` with the second-order Tweedie
    covariance ``Cov[s | x_t] = sigma_t^2 J``, ``J = d x0_hat / d x_t`` (Efron 2011; Meng, Song,
    Li & Ermon 2021, NeurIPS, "Estimating high order gradients of the data distribution by
    denoising"). Treating the covariance as locally constant,

        grad = J^T A^T K^{-1} (y - A x0_hat),    K = Sigma + sigma_t^2 A J A^T,

    where ``K^{-1}`` is applied by conjugate gradients on the whitened system
    ``I + sigma_t^2 W^{1/2} A J A^T W^{1/2}``: each CG iteration costs one Jacobian-vector
    product through the denoiser (``jax.linearize``) plus one operator and one adjoint call.
    If ``p(s | x_t)`` is Gaussian (any Gaussian prior, at every ``t``) this is the exact
    ``grad log p_t(y | x_t)``; for a general prior it keeps all pixel correlations of lensing,
    the PSF and the prior that CLA and PiGDM drop.

    Parameters
    ----------
    cg_tol
        Relative residual tolerance of the CG solve. The default ``1e-2`` keeps the score error
        below 1 % of the posterior score at every noise level on the 16x16 test problem
        (``docs/source_posterior.md``).
    cg_maxiter
        Iteration cap (bounds the cost per step; the whitened system is worst conditioned at
        high noise, where ``sigma_t^2 J -> S`` and ~100 iterations are needed).
    cheap_above_sigma
        Schedule: for ``sigma_t`` above this value use the diagonal PiGDM approximation (two
        network passes) instead of the CG solve. ``None`` (default): always exact.
    data_variance
        ``v`` for the cheap branch (see :class:`PiGDM`).
    """

    cg_tol: float = eqx.field(static=True, default=1e-2)
    cg_maxiter: int = eqx.field(static=True, default=100)
    cheap_above_sigma: float | None = eqx.field(static=True, default=None)
    data_variance: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not self.cg_tol > 0 or int(self.cg_maxiter) < 1:
            raise ValueError(
                f"CalibratedTweedie needs cg_tol > 0 and cg_maxiter >= 1, got {self.cg_tol}, {self.cg_maxiter}."
            )
        if self.cheap_above_sigma is not None and not self.cheap_above_sigma > 0:
            raise ValueError(f"cheap_above_sigma must be > 0 or None, got {self.cheap_above_sigma}.")

    def _cheap(self) -> PiGDM:
        return PiGDM(data_variance=self.data_variance, covariance="diag")

    def prepare(self, prior, operator, data, noise_sigma) -> LikelihoodProblem:
        if self.cheap_above_sigma is None:
            return _base_problem(prior, operator, data, noise_sigma)
        return self._cheap().prepare(prior, operator, data, noise_sigma)

    def _exact_branch(self, x, t, problem):
        sigma2 = problem.prior.sde.sigma(t) ** 2
        score, x0, jvp_fn, jt = _tweedie_linearized(problem.prior, x, t, transpose=True)
        resid = problem.data - problem.operator(x0)
        kinv_r, iters = _solve_whitened(
            problem.operator, problem.inv_var, lambda s: sigma2 * jvp_fn(s), resid, self.cg_tol, self.cg_maxiter
        )
        return score, jt(problem.operator.adjoint(kinv_r)), iters

    def _evaluate(self, x, t, problem):
        if self.cheap_above_sigma is None:
            return self._exact_branch(x, t, problem)
        cheap = self._cheap()

        def cheap_branch(x):
            score, lik, _ = cheap._evaluate(x, t, problem)
            return score, lik, jnp.asarray(0)

        use_cheap = problem.prior.sde.sigma(t) > self.cheap_above_sigma
        return jax.lax.cond(use_cheap, cheap_branch, lambda x: self._exact_branch(x, t, problem), x)

    def posterior_score(self, x, t, problem):
        prior_score, lik, _ = self._evaluate(x, t, problem)
        return prior_score + lik

    def likelihood_score(self, x, t, problem):
        return self._evaluate(x, t, problem)[1]

    def cg_iterations(self, x, t, problem) -> Float[Array, ""]:
        """CG iterations taken at ``(x, t)`` (0 on the cheap branch of the schedule)."""
        return self._evaluate(x, t, problem)[2]

    def network_passes(self, x, t, problem):
        # one linearised forward pass, one JVP per CG iteration, one transpose (VJP)
        return 2.0 + self.cg_iterations(x, t, problem).astype(float)


class ExactGaussianLikelihoodScore(AbstractLikelihoodScore):
    """The analytic likelihood score for a Gaussian or Gaussian-mixture prior (tests, studies).

    ``grad log p_t(y | x_t) = grad log p_t(x_t | y) - grad log p_t(x_t)``, both noised densities
    known in closed form (:mod:`blindlens.gaussian_prior`). :meth:`posterior_score` returns the
    exact noised posterior score directly.
    """

    def prepare(self, prior, operator, data, noise_sigma) -> LikelihoodProblem:
        if not isinstance(prior, (GaussianSourcePrior, GaussianMixtureSourcePrior)):
            raise ValueError(
                "ExactGaussianLikelihoodScore needs a GaussianSourcePrior or GaussianMixtureSourcePrior, "
                f"got {type(prior).__name__}; use CalibratedTweedie, PiGDM or CLA for other priors."
            )
        problem = _base_problem(prior, operator, data, noise_sigma)
        posterior = prior.posterior(operator, data, noise_sigma)
        return eqx.tree_at(lambda p: p.posterior, problem, posterior, is_leaf=lambda v: v is None)

    def posterior_score(self, x, t, problem):
        return problem.posterior.noised_score(x, problem.prior.sde.sigma(t))

    def likelihood_score(self, x, t, problem):
        return self.posterior_score(x, t, problem) - problem.prior.score(x, t)

    def log_likelihood_and_scores(self, x, t, problem):
        # Bayes at time t: log p_t(y | x_t) = log p_t(x_t | y) - log p_t(x_t) + log p(y)
        sigma = problem.prior.sde.sigma(t)
        log_lik = problem.posterior.noised_log_prob(x, sigma) - problem.prior.log_prob(x, t)
        prior_score = problem.prior.score(x, t)
        return log_lik, prior_score, self.posterior_score(x, t, problem) - prior_score

    def affine_in_x(self, prior) -> bool:
        # difference of two Gaussian scores: -(C_post + s^2)^-1 + (C + s^2)^-1 <= 0 (C_post <= C)
        return isinstance(prior, GaussianSourcePrior)

    def network_passes(self, x, t, problem):
        return jnp.asarray(0.0)


class TemperedLikelihoodScore(AbstractLikelihoodScore):
    """``factor`` times another likelihood score (``factor = 2``: the must-fail test control).

    Parameters
    ----------
    base
        The likelihood score to scale.
    factor
        Multiplier (> 0). Targets ``p(s) p(y | s)^factor`` only for exact scores at ``t -> 0``.
    """

    base: AbstractLikelihoodScore
    factor: float = eqx.field(static=True, default=2.0)

    def __check_init__(self):
        if not self.factor > 0:
            raise ValueError(f"TemperedLikelihoodScore factor must be > 0, got {self.factor}.")

    def prepare(self, prior, operator, data, noise_sigma) -> LikelihoodProblem:
        return self.base.prepare(prior, operator, data, noise_sigma)

    def likelihood_score(self, x, t, problem):
        return self.factor * self.base.likelihood_score(x, t, problem)

    def log_likelihood_and_scores(self, x, t, problem):
        log_lik, prior_score, lik = self.base.log_likelihood_and_scores(x, t, problem)
        return self.factor * log_lik, prior_score, self.factor * lik

    def affine_in_x(self, prior) -> bool:
        return self.base.affine_in_x(prior)

    @property
    def default_solver(self) -> str:
        return self.base.default_solver

    def network_passes(self, x, t, problem):
        return self.base.network_passes(x, t, problem) + 1.0


def guidance_by_name(name: str) -> AbstractLikelihoodScore:
    """The built-in guidance rule called ``name`` (one of :data:`GUIDANCE_NAMES`): :class:`PiGDM`,
    :class:`CalibratedTweedie` or :class:`CLA` with default settings."""
    table = dict(zip(GUIDANCE_NAMES, (PiGDM, CalibratedTweedie, CLA), strict=True))
    if name not in table:
        raise ValueError(f"unknown guidance {name!r}; choose one of {', '.join(GUIDANCE_NAMES)}.")
    return table[name]()

