"""Analytic source priors: a Gaussian and a Gaussian mixture, with exact noised scores and posteriors.

These priors make every quantity of a guided diffusion sampler known in closed form, which is
what turns "is the source posterior right?" into an exact test (data-and-validation.md §B.2).

For a prior ``s ~ N(m, S)`` and the variance-exploding diffusion ``x_t = s + sigma_t z``
(Song et al. 2021, ICLR, eq. 31):

* noised density ``p_t(x) = N(x; m, S + sigma_t^2 I)``, score ``-(S + sigma_t^2 I)^{-1} (x - m)``;
* Tweedie mean ``E[s | x_t] = m + S (S + sigma_t^2 I)^{-1} (x_t - m)`` and covariance
  ``Cov[s | x_t] = sigma_t^2 S (S + sigma_t^2 I)^{-1}`` (Efron 2011, JASA 106, 1602, "Tweedie's
  formula and selection bias"; second order: ``Cov = sigma_t^2 d E[s|x_t] / d x_t``);
* for data ``y = A s + n``, ``n ~ N(0, Sigma)`` with ``Sigma`` diagonal, the posterior is
  ``N(mu, C)`` with ``C = (S^{-1} + A^T Sigma^{-1} A)^{-1}`` and
  ``mu = m + C A^T Sigma^{-1} (y - A m)`` (Bishop 2006, *PRML*, eqs. 2.113-2.117), and its
  noised score is ``-(C + sigma_t^2 I)^{-1} (x - mu)``.

``C`` is computed as ``S^{1/2} (I + S^{1/2} A^T W A S^{1/2})^{-1} S^{1/2}`` with
``W = Sigma^{-1}``, which stays finite for singular ``S`` (smooth Gaussian-process priors) and
for masked pixels (``W = 0``). The evidence uses the matrix-determinant lemma
``det(A S A^T + Sigma) = det(Sigma) det(I + S^{1/2} A^T W A S^{1/2})``.

A mixture ``sum_k pi_k N(m_k, S_k)`` stays a mixture under noising and under conditioning on
linear-Gaussian data; its posterior weights are ``pi_k N(y; A m_k, A S_k A^T + Sigma)``,
normalised.

Dense matrices of size ``(sy sx)^2`` are formed: these priors are for tests and studies at
source sizes up to about 48x48.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import Array, Float, Image, PRNGKeyArray, SourceImage
from ..physics.linear_operator import AbstractLinearOperator, DenseOperator
from .diffusion_sde import VESDE
from .source_prior import AbstractSourcePrior

__all__ = [
    "GaussianSourcePrior",
    "GaussianMixtureSourcePrior",
    "GaussianPosterior",
    "GaussianMixturePosterior",
    "squared_exponential_covariance",
    "inverse_noise_variance",
    "operator_matrix",
]


# --------------------------------------------------------------------------------------------
# helpers shared by the Gaussian and mixture priors


def operator_matrix(operator: AbstractLinearOperator) -> Float[Array, "n_image n_source"]:
    """The dense matrix of a linear operator, ``(ny*nx, sy*sx)``, built column by column.

    Column ``k`` is ``A e_k`` for the ``k``-th source basis image (one operator call each,
    vectorised with ``vmap``). A :class:`~blindlens.linear_operator.DenseOperator` returns its
    stored matrix.
    """
    if isinstance(operator, DenseOperator):
        return operator.matrix
    sy, sx = operator.source_shape
    basis = jnp.eye(sy * sx).reshape(sy * sx, sy, sx)
    columns = jax.vmap(operator)(basis)
    return columns.reshape(sy * sx, -1).T


def inverse_noise_variance(
    noise_sigma: Float[Array, "..."] | float,
    image_shape: tuple[int, int],
    operator: AbstractLinearOperator | None = None,
) -> Image:
    """Per-pixel inverse noise variance ``W = 1 / sigma^2``, zero where a pixel is masked.

    A pixel is masked when its noise std is ``+inf`` or when the operator carries a ``mask``
    attribute (boolean or 0/1 image) that is false there.

    Parameters
    ----------
    noise_sigma
        Scalar or ``image_shape`` array of Gaussian noise standard deviations, in image units.
    image_shape
        ``(ny, nx)`` of the data.
    operator
        Optional operator whose ``mask`` (if any) is applied.

    Raises
    ------
    ValueError
        If the shape does not broadcast to ``image_shape`` or a (concrete) value is not > 0.
    """
    sigma = jnp.asarray(noise_sigma)
    if sigma.ndim not in (0, 2) or (sigma.ndim == 2 and tuple(sigma.shape) != tuple(image_shape)):
        raise ValueError(
            f"noise_sigma must be a scalar or an image of shape {tuple(image_shape)}, got shape "
            f"{tuple(sigma.shape)}. Pass the per-pixel noise standard deviation map."
        )
    # numpy, not jnp: inside a trace jnp would stage the check out even for a constant array
    if not isinstance(sigma, jax.core.Tracer) and bool(np.any(~(np.asarray(sigma) > 0))):
        raise ValueError(
            "noise_sigma must be > 0 everywhere (use +inf to mask a pixel); found values <= 0 or NaN."
        )
    sigma = jnp.broadcast_to(sigma, image_shape)
    w = jnp.where(jnp.isfinite(sigma), 1.0 / sigma**2, 0.0)
    mask = getattr(operator, "mask", None) if operator is not None else None
    if mask is not None:
        w = w * jnp.asarray(mask, w.dtype)
    return w


def _check_problem(shape, operator: AbstractLinearOperator, data) -> None:
    if tuple(operator.source_shape) != tuple(shape):
        raise ValueError(
            f"The prior's source shape {tuple(shape)} differs from the operator's "
            f"{tuple(operator.source_shape)}; build the operator on the prior's source grid."
        )
    if tuple(jnp.shape(data)) != tuple(operator.image_shape):
        raise ValueError(
            f"data has shape {tuple(jnp.shape(data))} but the operator maps to images of shape "
            f"{tuple(operator.image_shape)}."
        )


def _symmetric_eigh(cov):
    cov = 0.5 * (cov + cov.T)
    lam, vec = jnp.linalg.eigh(cov)
    return jnp.clip(lam, 0.0, None), vec


def _gaussian_posterior_arrays(mean_flat, lam, vec, amat, w_flat, y_flat):
    """Posterior ``(mu, C eigenvalues, C eigenvectors, log evidence)`` of one Gaussian component."""
    sqrt_s = (vec * jnp.sqrt(lam)) @ vec.T
    resid = y_flat - amat @ mean_flat
    aw = amat * w_flat[:, None]
    b = sqrt_s @ (amat.T @ aw) @ sqrt_s
    beta, v = _symmetric_eigh(b)
    left = sqrt_s @ v
    cov = (left / (1.0 + beta)) @ left.T
    cov = 0.5 * (cov + cov.T)
    grad = aw.T @ resid
    mu = mean_flat + cov @ grad
    observed = w_flat > 0
    n_obs = jnp.sum(observed)
    log_det_sigma = -jnp.sum(jnp.where(observed, jnp.log(jnp.where(observed, w_flat, 1.0)), 0.0))
    quad = jnp.sum(w_flat * resid**2) - grad @ cov @ grad
    log_ev = -0.5 * (quad + jnp.sum(jnp.log1p(beta)) + log_det_sigma + n_obs * jnp.log(2 * jnp.pi))
    c_lam, c_vec = _symmetric_eigh(cov)
    return mu, c_lam, c_vec, log_ev


def _noised_log_density(x_flat, mean_flat, lam, vec, var):
    """``log N(x; m, U diag(lam) U^T + var I)``."""
    proj = vec.T @ (x_flat - mean_flat)
    total = lam + var
    return -0.5 * (jnp.sum(proj**2 / total) + jnp.sum(jnp.log(total)) + x_flat.size * jnp.log(2 * jnp.pi))


def _noised_score(x_flat, mean_flat, lam, vec, var):
    """``-(U diag(lam) U^T + var I)^{-1} (x - m)``."""
    proj = vec.T @ (x_flat - mean_flat)
    return -vec @ (proj / (lam + var))


def squared_exponential_covariance(
    shape: tuple[int, int], length_scale: float, amplitude: float = 1.0, jitter: float = 1e-6
) -> Float[Array, "d d"]:
    """Squared-exponential (Gaussian-process) covariance between the pixels of a grid.

    ``S_ij = amplitude^2 exp(-|r_i - r_j|^2 / (2 length_scale^2)) + jitter amplitude^2 delta_ij``
    (Rasmussen & Williams 2006, *Gaussian Processes for Machine Learning*, eq. 2.16), with
    ``r`` in pixels.

    Parameters
    ----------
    shape
        ``(sy, sx)``.
    length_scale
        Correlation length in pixels (> 0).
    amplitude
        Marginal standard deviation per pixel, in image units (> 0).
    jitter
        Relative diagonal term that keeps ``S`` numerically positive definite.
    """
    if not length_scale > 0 or not amplitude > 0 or jitter < 0:
        raise ValueError(
            f"squared-exponential covariance needs length_scale > 0, amplitude > 0, jitter >= 0; "
            f"got {length_scale}, {amplitude}, {jitter}."
        )
    sy, sx = shape
    jj, ii = jnp.meshgrid(jnp.arange(sy), jnp.arange(sx), indexing="ij")
    r = jnp.stack([jj.ravel(), ii.ravel()], axis=-1).astype(float)
    d2 = jnp.sum((r[:, None, :] - r[None, :, :]) ** 2, axis=-1)
    return amplitude**2 * (jnp.exp(-0.5 * d2 / length_scale**2) + jitter * jnp.eye(sy * sx))


# --------------------------------------------------------------------------------------------
# posteriors


class GaussianPosterior(eqx.Module):
    """The exact posterior ``N(mu, C)`` of a Gaussian source prior given linear-Gaussian data.

    Attributes
    ----------
    mean
        ``mu``, shape ``(sy, sx)``.
    eigvals, eigvecs
        Eigen-decomposition of ``C`` (``(d,)`` and ``(d, d)``, ``d = sy*sx``).
    log_evidence
        ``log N(y; A m, A S A^T + Sigma)`` over the unmasked pixels.
    """

    mean: SourceImage
    eigvals: Float[Array, " d"]
    eigvecs: Float[Array, "d d"]
    log_evidence: Float[Array, ""]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mean.shape)

    @property
    def cov(self) -> Float[Array, "d d"]:
        """The dense posterior covariance ``C``."""
        return (self.eigvecs * self.eigvals) @ self.eigvecs.T

    def noised_score(self, x: SourceImage, sigma: Float[Array, ""]) -> SourceImage:
        """Score of the noised posterior, ``-(C + sigma^2 I)^{-1} (x - mu)``."""
        out = _noised_score(x.reshape(-1), self.mean.reshape(-1), self.eigvals, self.eigvecs, sigma**2)
        return out.reshape(self.shape)

    def noised_log_prob(self, x: SourceImage, sigma: Float[Array, ""]) -> Float[Array, ""]:
        """``log N(x; mu, C + sigma^2 I)``, the log density of the noised posterior."""
        return _noised_log_density(x.reshape(-1), self.mean.reshape(-1), self.eigvals, self.eigvecs, sigma**2)

    def sample(self, key: PRNGKeyArray, num_samples: int) -> Float[Array, "n sy sx"]:
        """Exact draws from ``N(mu, C)``."""
        z = jr.normal(key, (num_samples, self.eigvals.size))
        draws = (z * jnp.sqrt(self.eigvals)) @ self.eigvecs.T + self.mean.reshape(-1)
        return draws.reshape(num_samples, *self.shape)

    def whiten(self, samples: Float[Array, "n sy sx"]) -> Float[Array, "n d"]:
        """Coordinates ``z_i = u_i^T (x - mu) / sqrt(c_i)`` in the posterior eigenbasis."""
        flat = samples.reshape(samples.shape[0], -1) - self.mean.reshape(-1)
        return (flat @ self.eigvecs) / jnp.sqrt(self.eigvals)


class GaussianMixturePosterior(eqx.Module):
    """The exact posterior of a Gaussian-mixture source prior: a mixture of Gaussian posteriors.

    Attributes
    ----------
    log_weights
        Normalised log posterior mode weights, ``(K,)``.
    means, eigvals, eigvecs
        Stacked per-component posterior means ``(K, sy, sx)`` and covariance eigen-decompositions.
    """

    log_weights: Float[Array, " K"]
    means: Float[Array, "K sy sx"]
    eigvals: Float[Array, "K d"]
    eigvecs: Float[Array, "K d d"]

    @property
    def weights(self) -> Float[Array, " K"]:
        """Posterior mode weights (sum to one)."""
        return jnp.exp(self.log_weights)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.means.shape[1:])

    def component(self, k: int) -> GaussianPosterior:
        """The ``k``-th component as a :class:`GaussianPosterior` (its evidence set to 0)."""
        return GaussianPosterior(self.means[k], self.eigvals[k], self.eigvecs[k], jnp.zeros(()))

    def _log_joint(self, x_flat, var):
        dens = jax.vmap(_noised_log_density, in_axes=(None, 0, 0, 0, None))(
            x_flat, self.means.reshape(self.means.shape[0], -1), self.eigvals, self.eigvecs, var
        )
        return self.log_weights + dens

    def noised_score(self, x: SourceImage, sigma: Float[Array, ""]) -> SourceImage:
        """Exact score of the posterior mixture noised by ``N(0, sigma^2 I)``."""
        x_flat = x.reshape(-1)
        resp = jax.nn.softmax(self._log_joint(x_flat, sigma**2))
        scores = jax.vmap(_noised_score, in_axes=(None, 0, 0, 0, None))(
            x_flat, self.means.reshape(self.means.shape[0], -1), self.eigvals, self.eigvecs, sigma**2
        )
        return (resp @ scores).reshape(self.shape)

    def noised_log_prob(self, x: SourceImage, sigma: Float[Array, ""]) -> Float[Array, ""]:
        """Log density of the posterior mixture noised by ``N(0, sigma^2 I)``."""
        return jax.nn.logsumexp(self._log_joint(x.reshape(-1), sigma**2))

    def responsibilities(self, samples: Float[Array, "n sy sx"], sigma: float = 0.0) -> Float[Array, "n K"]:
        """Posterior probability that each sample belongs to each mode (optionally noised)."""
        flat = samples.reshape(samples.shape[0], -1)
        log_joint = jax.vmap(lambda x: self._log_joint(x, sigma**2))(flat)
        return jax.nn.softmax(log_joint, axis=-1)

    def sample(self, key: PRNGKeyArray, num_samples: int) -> Float[Array, "n sy sx"]:
        """Exact draws from the posterior mixture."""
        k_mode, k_z = jr.split(key)
        modes = jr.categorical(k_mode, self.log_weights, shape=(num_samples,))
        z = jr.normal(k_z, (num_samples, self.eigvals.shape[1]))
        lam = self.eigvals[modes]
        vec = self.eigvecs[modes]
        draws = jnp.einsum("nij,nj->ni", vec, z * jnp.sqrt(lam))
        return draws.reshape(num_samples, *self.shape) + self.means[modes]


# --------------------------------------------------------------------------------------------
# priors


class GaussianSourcePrior(AbstractSourcePrior):
    """A Gaussian source prior ``N(m, S)`` with exact VE-noised scores.

    Parameters
    ----------
    mean
        Prior mean ``m``, shape ``(sy, sx)``, image units (surface brightness).
    cov
        Prior covariance ``S``, ``(sy*sx, sy*sx)``, symmetric positive semi-definite, over the
        row-major flattened source.
    sde
        The VE SDE the scores refer to.
    pixel_scale
        Source pixel scale in arcsec/pixel.

    Notes
    -----
    ``S`` is eigen-decomposed once (``S = U diag(lam) U^T``); every noised quantity is then a
    diagonal operation in that basis. See the module docstring for the formulas.
    """

    mean: SourceImage
    eigvals: Float[Array, " d"]
    eigvecs: Float[Array, "d d"]
    _sde: VESDE
    _pixel_scale: float = eqx.field(static=True)

    def __init__(self, mean, cov, sde: VESDE, pixel_scale: float):
        mean = jnp.asarray(mean)
        cov = jnp.asarray(cov)
        if mean.ndim != 2:
            raise ValueError(f"GaussianSourcePrior mean must be a (sy, sx) image, got shape {mean.shape}.")
        d = mean.size
        if cov.shape != (d, d):
            raise ValueError(
                f"GaussianSourcePrior cov must have shape ({d}, {d}) for a {mean.shape} mean "
                f"(row-major flattened pixels), got {cov.shape}."
            )
        if not pixel_scale > 0:
            raise ValueError(f"pixel_scale must be positive (arcsec/pixel), got {pixel_scale}.")
        self.mean = mean
        self.eigvals, self.eigvecs = _symmetric_eigh(cov)
        self._sde = sde
        self._pixel_scale = float(pixel_scale)

    @classmethod
    def squared_exponential(
        cls,
        shape: tuple[int, int],
        length_scale: float,
        sde: VESDE,
        pixel_scale: float,
        amplitude: float = 1.0,
        mean: float | SourceImage = 0.0,
        jitter: float = 1e-6,
    ) -> GaussianSourcePrior:
        """A stationary Gaussian-process prior with a squared-exponential kernel.

        ``length_scale`` is in pixels; see :func:`squared_exponential_covariance`.
        """
        cov = squared_exponential_covariance(shape, length_scale, amplitude, jitter)
        mean = jnp.broadcast_to(jnp.asarray(mean, float), shape)
        return cls(mean, cov, sde, pixel_scale)

    @property
    def sde(self) -> VESDE:
        return self._sde

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mean.shape)

    @property
    def pixel_scale(self) -> float:
        return self._pixel_scale

    @property
    def cov(self) -> Float[Array, "d d"]:
        """The dense prior covariance ``S``."""
        return (self.eigvecs * self.eigvals) @ self.eigvecs.T

    def pixel_variance(self) -> Float[Array, ""]:
        """Mean prior variance per pixel, ``tr(S) / d``."""
        return jnp.mean(self.eigvals)

    def score(self, x: SourceImage, t: Float[Array, ""]) -> SourceImage:
        """Exact noised score ``-(S + sigma_t^2 I)^{-1} (x - m)``."""
        var = self.sde.sigma(t) ** 2
        return _noised_score(x.reshape(-1), self.mean.reshape(-1), self.eigvals, self.eigvecs, var).reshape(
            self.shape
        )

    def denoise(self, x: SourceImage, t: Float[Array, ""]) -> SourceImage:
        """Exact Tweedie mean ``m + S (S + sigma_t^2 I)^{-1} (x - m)``."""
        var = self.sde.sigma(t) ** 2
        proj = self.eigvecs.T @ (x.reshape(-1) - self.mean.reshape(-1))
        return self.mean + (self.eigvecs @ (proj * self.eigvals / (self.eigvals + var))).reshape(self.shape)

    def denoise_covariance(self, t: Float[Array, ""]) -> Float[Array, "d d"]:
        """Exact ``Cov[s | x_t] = sigma_t^2 S (S + sigma_t^2 I)^{-1}`` (independent of ``x_t``)."""
        var = self.sde.sigma(t) ** 2
        return (self.eigvecs * (self.eigvals * var / (self.eigvals + var))) @ self.eigvecs.T

    def log_prob(self, x: SourceImage, t: Float[Array, ""]) -> Float[Array, ""]:
        """``log p_t(x) = log N(x; m, S + sigma_t^2 I)``."""
        var = self.sde.sigma(t) ** 2
        return _noised_log_density(x.reshape(-1), self.mean.reshape(-1), self.eigvals, self.eigvecs, var)

    def sample(self, key: PRNGKeyArray, num_samples: int) -> Float[Array, "n sy sx"]:
        """Exact draws from the prior ``N(m, S)``."""
        z = jr.normal(key, (num_samples, self.eigvals.size))
        draws = (z * jnp.sqrt(self.eigvals)) @ self.eigvecs.T
        return draws.reshape(num_samples, *self.shape) + self.mean

    def posterior(
        self, operator: AbstractLinearOperator, data: Image, noise_sigma: Float[Array, "..."] | float
    ) -> GaussianPosterior:
        """The exact posterior ``N(mu, C)`` for ``y = A s + n``, ``n ~ N(0, diag(noise_sigma^2))``.

        Pixels with ``noise_sigma = inf`` (or outside the operator's ``mask``) are ignored.
        """
        _check_problem(self.shape, operator, data)
        w = inverse_noise_variance(noise_sigma, operator.image_shape, operator)
        mu, c_lam, c_vec, log_ev = _gaussian_posterior_arrays(
            self.mean.reshape(-1), self.eigvals, self.eigvecs, operator_matrix(operator), w.reshape(-1),
            jnp.asarray(data).reshape(-1),
        )
        return GaussianPosterior(mu.reshape(self.shape), c_lam, c_vec, log_ev)


class GaussianMixtureSourcePrior(AbstractSourcePrior):
    """A Gaussian-mixture source prior ``sum_k w_k N(m_k, S_k)`` with exact noised scores.

    Parameters
    ----------
    weights
        Mixture weights ``(K,)``, positive; normalised here.
    means
        Component means ``(K, sy, sx)``, image units.
    covs
        Component covariances ``(K, d, d)`` over row-major flattened pixels.
    sde, pixel_scale
        As for :class:`GaussianSourcePrior`.

    Notes
    -----
    The noised density is ``sum_k w_k N(x; m_k, S_k + sigma_t^2 I)``; its score is the
    responsibility-weighted sum of the component scores, evaluated with log-sum-exp.
    """

    log_weights: Float[Array, " K"]
    means: Float[Array, "K sy sx"]
    eigvals: Float[Array, "K d"]
    eigvecs: Float[Array, "K d d"]
    _sde: VESDE
    _pixel_scale: float = eqx.field(static=True)

    def __init__(self, weights, means, covs, sde: VESDE, pixel_scale: float):
        weights = jnp.asarray(weights, float)
        means = jnp.asarray(means)
        covs = jnp.asarray(covs)
        if weights.ndim != 1 or means.ndim != 3 or means.shape[0] != weights.shape[0]:
            raise ValueError(
                f"GaussianMixtureSourcePrior needs weights (K,) and means (K, sy, sx); got "
                f"{weights.shape} and {means.shape}."
            )
        d = means.shape[1] * means.shape[2]
        if covs.shape != (weights.shape[0], d, d):
            raise ValueError(f"covs must have shape {(weights.shape[0], d, d)}, got {covs.shape}.")
        if not isinstance(weights, jax.core.Tracer) and bool(jnp.any(~(weights > 0))):
            raise ValueError("mixture weights must all be > 0; drop components with zero weight.")
        if not pixel_scale > 0:
            raise ValueError(f"pixel_scale must be positive (arcsec/pixel), got {pixel_scale}.")
        self.log_weights = jnp.log(weights / jnp.sum(weights))
        self.means = means
        self.eigvals, self.eigvecs = jax.vmap(_symmetric_eigh)(covs)
        self._sde = sde
        self._pixel_scale = float(pixel_scale)

    @property
    def sde(self) -> VESDE:
        return self._sde

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.means.shape[1:])

    @property
    def pixel_scale(self) -> float:
        return self._pixel_scale

    @property
    def weights(self) -> Float[Array, " K"]:
        return jnp.exp(self.log_weights)

    def pixel_variance(self) -> Float[Array, ""]:
        """Mean prior variance per pixel (law of total variance)."""
        w = self.weights
        flat = self.means.reshape(self.means.shape[0], -1)
        mean = w @ flat
        second = w @ (jnp.mean(self.eigvals, axis=1) + jnp.mean(flat**2, axis=1))
        return second - jnp.mean(mean**2)

    def _log_joint(self, x_flat, var):
        dens = jax.vmap(_noised_log_density, in_axes=(None, 0, 0, 0, None))(
            x_flat, self.means.reshape(self.means.shape[0], -1), self.eigvals, self.eigvecs, var
        )
        return self.log_weights + dens

    def log_prob(self, x: SourceImage, t: Float[Array, ""]) -> Float[Array, ""]:
        """``log p_t(x)`` of the noised mixture."""
        return jax.nn.logsumexp(self._log_joint(x.reshape(-1), self.sde.sigma(t) ** 2))

    def score(self, x: SourceImage, t: Float[Array, ""]) -> SourceImage:
        """Exact noised score (responsibility-weighted component scores)."""
        var = self.sde.sigma(t) ** 2
        x_flat = x.reshape(-1)
        resp = jax.nn.softmax(self._log_joint(x_flat, var))
        scores = jax.vmap(_noised_score, in_axes=(None, 0, 0, 0, None))(
            x_flat, self.means.reshape(self.means.shape[0], -1), self.eigvals, self.eigvecs, var
        )
        return (resp @ scores).reshape(self.shape)

    def sample(self, key: PRNGKeyArray, num_samples: int) -> Float[Array, "n sy sx"]:
        """Exact draws from the prior mixture."""
        k_mode, k_z = jr.split(key)
        modes = jr.categorical(k_mode, self.log_weights, shape=(num_samples,))
        z = jr.normal(k_z, (num_samples, self.eigvals.shape[1]))
        draws = jnp.einsum("nij,nj->ni", self.eigvecs[modes], z * jnp.sqrt(self.eigvals[modes]))
        return draws.reshape(num_samples, *self.shape) + self.means[modes]

    def posterior(
        self, operator: AbstractLinearOperator, data: Image, noise_sigma: Float[Array, "..."] | float
    ) -> GaussianMixturePosterior:
        """The exact posterior mixture: per-component Gaussian posteriors and evidence weights."""
        _check_problem(self.shape, operator, data)
        w = inverse_noise_variance(noise_sigma, operator.image_shape, operator).reshape(-1)
        amat = operator_matrix(operator)
        y = jnp.asarray(data).reshape(-1)
        k = self.means.shape[0]
        mu, c_lam, c_vec, log_ev = jax.vmap(_gaussian_posterior_arrays, in_axes=(0, 0, 0, None, None, None))(
            self.means.reshape(k, -1), self.eigvals, self.eigvecs, amat, w, y
        )
        log_post = self.log_weights + log_ev
        log_post = log_post - jax.nn.logsumexp(log_post)
        return GaussianMixturePosterior(log_post, mu.reshape(k, *self.shape), c_lam, c_vec)
