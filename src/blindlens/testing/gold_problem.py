"""A small blind-lensing problem with a Gaussian source prior, shared by the joint-inference tests.

With a Gaussian prior ``s ~ N(m, S)`` the source marginalises analytically and
``p(theta | y) ∝ p(theta) N(y; A_theta m, A_theta S A_theta^T + sigma^2 I)``
(data-and-validation.md §B.2, test V-12), which plain NUTS samples exactly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
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
