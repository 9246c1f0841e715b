"""A small blind-lensing problem with a Gaussian source prior, shared by the joint-inference tests.

With a Gaussian prior ``s ~ N(m, S)`` the source marginalises analytically and
``p(theta | y) ∝ p(theta) N(y; A_theta m, A_theta S A_theta^T + sigma^2 I)``
(data-and-validation.md §B.2, test V-12), which plain NUTS samples exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist

from ..inference.lens_initialization import gaussian_log_evidence
from ..io.observation import Observation
from ..physics.grid import PixelGrid
from ..physics.lens_models import SIS
from ..physics.lensing_operator import LensingOperator
from ..physics.psf import gaussian_psf
from ..prior.diffusion_sde import VESDE
from ..prior.gaussian_prior import GaussianSourcePrior, squared_exponential_covariance
from ..source.likelihood_score import ExactGaussianLikelihoodScore, _base_problem


class Problem:
    """Source grid, image grid, PSF, a low-rank GP prior, the truth and an observation."""

    def __init__(self, source_shape=(16, 16), image_shape=(24, 24), pixel_scale=0.1, noise=0.1, rank=90,
                 length_scale=2.0, theta_E=0.8, center_x=0.03, seed=0, free=("theta_E", "center_x")):
        self.source_grid = PixelGrid(tuple(source_shape), pixel_scale)
        self.image_grid = PixelGrid(tuple(image_shape), pixel_scale)
        self.psf = gaussian_psf(2 * pixel_scale, pixel_scale)
        self.sde = VESDE(1e-3, 20.0)
        cov = squared_exponential_covariance(tuple(source_shape), length_scale, 1.0)
        lam, vec = jnp.linalg.eigh(cov)
        rank = min(rank, lam.size)
        lam, vec = lam[::-1][:rank], vec[:, ::-1][:, :rank]
        # a rank-truncated GP (99.9% of the variance for 16x16, length 2 px): the exact marginal
        # then costs one operator call per basis image
        self.basis = vec * jnp.sqrt(lam)
        self.prior = GaussianSourcePrior(jnp.zeros(tuple(source_shape)), (vec * lam) @ vec.T, self.sde, pixel_scale)
        self.noise = noise
        self.free = tuple(free)
        self.truth = {"theta_E": theta_E, "center_x": center_x}
        k_s, k_n = jr.split(jr.key(seed))
        self.source = (self.basis @ jr.normal(k_s, (rank,))).reshape(source_shape)
        op = LensingOperator(SIS(theta_E=theta_E, center_x=center_x), self.image_grid, self.source_grid, psf=self.psf)
        image = op(self.source) + noise * jr.normal(k_n, tuple(image_shape))
        self.observation = Observation(image, noise, self.psf, pixel_scale)

    def lens_model(self):
        te = numpyro.sample("theta_E", dist.Uniform(0.5, 1.2))
        if "center_x" in self.free:
            cx = numpyro.sample("center_x", dist.Normal(0.0, 0.1))
        else:
            cx = self.truth["center_x"]
        return SIS(theta_E=te, center_x=cx)

    def marginal_model(self):
        """``p(theta) N(y; 0, A S A^T + sigma^2 I)`` in the rank-k basis (up to a lens-free constant)."""
        lens = self.lens_model()
        op = LensingOperator(lens, self.image_grid, self.source_grid, psf=self.psf)
        image = jnp.asarray(self.observation.image)
        inv_var = jnp.full(image.shape, 1.0 / self.noise**2, image.dtype)
        numpyro.factor("marginal_likelihood", gaussian_log_evidence(op, self.basis, image, inv_var))


class LowRankExactGuidance(ExactGaussianLikelihoodScore):
    """The exact likelihood score for :class:`Problem`'s rank-k Gaussian prior, computed in the
    k-dimensional prior basis (``S = L L^T``, ``L`` of shape ``(d, k)``).

    With ``W = sigma^-2`` and ``M = I + (A L)^T W (A L)``: ``mu = L M^{-1} (A L)^T W y`` and
    ``C = B B^T`` with ``B = L M^{-1/2}`` (Bishop 2006, eqs. 2.113-2.117 in the k-dim
    coordinates). The noised posterior score is ``-(C + sigma_t^2 I)^{-1} (x - mu)``, applied with
    the thin SVD of ``B``. Same answer as its parent ``ExactGaussianLikelihoodScore`` at a fraction of the
    cost (k operator calls and k x k factorisations per lens instead of d).
    """

    basis: jax.Array

    def prepare(self, prior, operator, data, noise_sigma):
        problem = _base_problem(prior, operator, data, noise_sigma)
        k = self.basis.shape[1]
        al = jax.vmap(operator)(self.basis.T.reshape(k, *prior.shape)).reshape(k, -1).T
        w = problem.inv_var.reshape(-1)
        m = jnp.eye(k) + al.T @ (al * w[:, None])
        lam, vec = jnp.linalg.eigh(0.5 * (m + m.T))
        b = self.basis @ (vec / jnp.sqrt(lam))  # B = L M^{-1/2}
        mu = self.basis @ (vec @ ((vec.T @ (al.T @ (w * jnp.asarray(data).reshape(-1)))) / lam))
        u, s, _ = jnp.linalg.svd(b, full_matrices=False)
        posterior = _LowRankPosterior(mu.reshape(prior.shape), u, s**2)
        return eqx.tree_at(lambda p: p.posterior, problem, posterior, is_leaf=lambda v: v is None)

    # posterior_score, likelihood_score and network_passes: as ExactGaussianLikelihoodScore


class _LowRankPosterior(eqx.Module):
    mean: jax.Array
    vecs: jax.Array
    vals: jax.Array

    def noised_score(self, x, sigma):
        r = (x - self.mean).reshape(-1)
        proj = self.vecs.T @ r
        var = sigma**2
        out = self.vecs @ (proj / (self.vals + var)) + (r - self.vecs @ proj) / var
        return -out.reshape(self.mean.shape)


Z_99 = 2.326
"""``Phi^{-1}(0.99)``: the bound on the MCSE z-scores of :func:`gold_check`."""
KS_99 = 1.628
"""Asymptotic 1% critical value of ``sqrt(n) D`` (the Kolmogorov distribution)."""


class ExactMarginal(NamedTuple):
    """``p(theta_E | y)`` of a :class:`Problem` on a fine grid: ``grid`` (arcsec), its CDF, mean and sd."""

    grid: np.ndarray
    cdf: np.ndarray
    mean: float
    sd: float


def exact_theta_e_marginal(problem: Problem, half_width: float = 0.012, num: int = 801) -> ExactMarginal:
    """The exact lens marginal of a :class:`Problem` with ``theta_E`` its only free parameter.

    The log marginal (:meth:`Problem.marginal_model`) is located on a coarse grid over the prior's
    support (0.5-1.2"), then evaluated on ``num`` points within ``half_width`` arcsec of its mode
    (the posterior sd is ~1e-3" for the default problem) and normalised there.

    Raises
    ------
    ValueError
        When the mode sits at an end of the fine grid (widen ``half_width``).
    """
    from numpyro.infer.util import log_density

    def log_marginal(grid):
        return jax.lax.map(
            lambda te: log_density(problem.marginal_model, (), {}, {"theta_E": te})[0], grid, batch_size=64
        )

    coarse = jnp.linspace(0.5, 1.2, 351)
    mode = float(coarse[jnp.argmax(log_marginal(coarse))])
    grid = jnp.linspace(mode - half_width, mode + half_width, num)
    logp = log_marginal(grid)
    if int(jnp.argmax(logp)) in (0, grid.size - 1):
        raise ValueError(f"the marginal's mode is at an end of the grid +-{half_width}\" around {mode:.4f}; "
                         "pass a larger half_width.")
    w = np.array(jnp.exp(logp - logp.max()))
    w /= w.sum()
    grid = np.asarray(grid)
    mean = float(w @ grid)
    return ExactMarginal(grid, np.cumsum(w), mean, float(np.sqrt(w @ (grid - mean) ** 2)))


def mcse_sd(draws: np.ndarray, ess: Callable[[np.ndarray], float]) -> float:
    """Monte-Carlo standard error of the sample sd of ``draws`` (``(chain, draw)``).

    Delta method on the variance, whose MCSE uses ``ess`` of the squared deviations (Vehtari et
    al. 2021, Bayesian Analysis 16, 667, App. A); ``ess`` is the caller's ESS function (e.g.
    ``arviz.ess``), so this module does not depend on ArviZ.
    """
    sq = (draws - draws.mean()) ** 2
    return float(np.sqrt(np.var(sq) / float(ess(sq))) / (2 * draws.std()))


def gold_check(draws, ess: float, mcse: float, grid, cdf, mean: float, sd: float) -> tuple[float, float, float, float]:
    """``(z_mean, z_sd, ks_distance, ks_critical)`` of chain draws against an exact marginal.

    ``z_mean = (mean of draws - mean) / (sd of draws / sqrt(ess))``, ``z_sd = (sd of draws - sd) /
    mcse``, and the Kolmogorov-Smirnov distance of the draws from the marginal's CDF on ``grid``
    with its 1% critical value at the effective sample size, ``KS_99 / sqrt(ess)``. A sampler
    passes when ``|z_mean|, |z_sd| < Z_99`` and ``ks_distance < ks_critical``.
    """
    flat = np.sort(np.ravel(draws))
    z_mean = (flat.mean() - mean) / (flat.std() / np.sqrt(ess))
    z_sd = (flat.std() - sd) / mcse
    f = np.interp(flat, grid, cdf)
    n = flat.size
    ks = max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))
    return z_mean, z_sd, ks, KS_99 / np.sqrt(ess)
