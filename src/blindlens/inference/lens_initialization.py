"""Lens initialisation by the Gaussian-source evidence (multi-start semi-linear inversion).

A chain of the joint sampler started far from the lens posterior can settle on a wrong fixed
point: a source that is a good fit *for the wrong lens* (docs/joint_inference.md). The classical
cure in lens modelling is to marginalise a linear source with a Gaussian prior and optimise the
lens on the evidence (Warren & Dye 2003, ApJ 590, 673; Suyu et al. 2006, MNRAS 371, 983): with
``s ~ N(0, S)`` and ``y = A_theta s + n``, ``n ~ N(0, W^-1)``,

    log p(y | theta) = -1/2 [ y^T W y - c^T M^-1 c + log det M ] + const,
    M = I_k + (A_theta L)^T W (A_theta L),   c = (A_theta L)^T W y,

where ``S ≈ L L^T`` keeps the ``k`` leading eigenmodes of ``S`` (matrix-determinant lemma and
Woodbury identity; Rasmussen & Williams 2006, eqs. A.9-A.10). The landscape of
``log p(theta) + log p(y | theta)`` is smooth (no source to co-adapt), so a few Adam runs from
prior draws find the lens mode; the best of them starts the chains.

For a :class:`~blindlens.gaussian_prior.GaussianSourcePrior` the covariance is the prior's own
and the objective is the exact log marginal posterior. For other priors (the score prior) ``S`` is
a squared-exponential Gaussian process on a coarse copy of the source grid, with the pixel variance
estimated from the data (lensing conserves surface brightness).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._optimisers import adam_maximise
from .._types import Array, Float, PRNGKeyArray
from ..physics.linear_operator import AbstractLinearOperator
from ..prior.gaussian_prior import GaussianSourcePrior, squared_exponential_covariance
from ..source.likelihood_score import data_pixel_variance

__all__ = [
    "EvidenceSearchConfig",
    "EvidenceSearchResult",
    "evidence_search_model",
    "search_kernel_lens",
    "covariance_basis",
    "gaussian_log_evidence",
    "search_lens_by_evidence",
]


class EvidenceSearchConfig(eqx.Module):
    """Settings of :func:`search_lens_by_evidence` (all static).

    Attributes
    ----------
    num_starts
        Independent Adam runs, each from a draw of the lens prior.
    num_steps
        Adam steps per run (in NumPyro's unconstrained space).
    learning_rate
        Initial Adam step size (unconstrained units), decayed to zero on a cosine schedule.
    source_pixels
        Side of the coarse source grid used for the search (same field as the source grid);
        ignored for Gaussian priors, whose own covariance and grid are used.
    correlation_pixels
        Squared-exponential correlation length, in coarse pixels.
    variance_fraction
        Fraction of the prior variance kept by the eigenmode basis ``L``.
    """

    num_starts: int = eqx.field(static=True, default=8)
    num_steps: int = eqx.field(static=True, default=100)
    learning_rate: float = eqx.field(static=True, default=0.05)
    source_pixels: int = eqx.field(static=True, default=12)
    correlation_pixels: float = eqx.field(static=True, default=1.0)
    variance_fraction: float = eqx.field(static=True, default=0.99)

    def __check_init__(self):
        if self.num_starts < 1 or self.num_steps < 0:
            raise ValueError(
                f"EvidenceSearchConfig needs num_starts >= 1 and num_steps >= 0, got "
                f"{self.num_starts} and {self.num_steps}."
            )
        if not self.learning_rate > 0 or self.source_pixels < 2 or not self.correlation_pixels > 0:
            raise ValueError("EvidenceSearchConfig learning_rate and correlation_pixels must be > 0, source_pixels >= 2.")
        if not 0 < self.variance_fraction <= 1:
            raise ValueError(f"variance_fraction must be in (0, 1], got {self.variance_fraction}.")


class EvidenceSearchResult(NamedTuple):
    """Outcome of :func:`search_lens_by_evidence`.

    Attributes
    ----------
    lens
        Constrained lens values of the best run (site name -> array).
    log_posterior
        Final ``log p(theta) + log p(y | theta)`` (unconstrained-space density) of every run.
    runs
        Constrained lens values at the end of every run (site name -> ``(num_starts,)``).
    """

    lens: dict
    log_posterior: Float[Array, " num_starts"]
    runs: dict


def covariance_basis(cov: Float[Array, "d d"], variance_fraction: float = 1.0) -> Float[Array, "d k"]:
    """``L`` with ``L L^T`` the leading eigenmodes of ``cov`` holding ``variance_fraction`` of its trace."""
    lam, vec = jnp.linalg.eigh(0.5 * (cov + cov.T))
    return _eigenmode_basis(lam, vec, variance_fraction)


def _eigenmode_basis(lam, vec, variance_fraction):
    order = jnp.argsort(lam)[::-1]
    lam, vec = jnp.clip(lam[order], 0.0, None), vec[:, order]
    cumulative = jnp.cumsum(lam) / jnp.sum(lam)
    k = min(int(jnp.searchsorted(cumulative, variance_fraction * (1 - 1e-12))) + 1, lam.size)
    return vec[:, :k] * jnp.sqrt(lam[:k])


def gaussian_log_evidence(
    operator: AbstractLinearOperator,
    basis: Float[Array, "d k"],
    data: Float[Array, "ny nx"],
    inv_var: Float[Array, "ny nx"],
) -> Float[Array, ""]:
    """``log N(y; 0, A L L^T A^T + W^-1)`` up to the lens-independent ``1/2 sum log W - N/2 log 2 pi``.

    Exact for ``S = L L^T`` (module docstring); ``inv_var = W`` is ``0`` on masked pixels.
    Costs ``k`` operator applications and a ``k x k`` Cholesky factorisation.
    """
    k = basis.shape[1]
    al = jax.vmap(operator)(basis.T.reshape(k, *operator.source_shape)).reshape(k, -1).T
    w = inv_var.reshape(-1)
    y = data.reshape(-1)
    m = jnp.eye(k, dtype=al.dtype) + al.T @ (al * w[:, None])
    chol = jnp.linalg.cholesky(m)
    z = jax.scipy.linalg.solve_triangular(chol, al.T @ (w * y), lower=True)
    return -0.5 * (jnp.sum(w * y**2) - z @ z) - jnp.sum(jnp.log(jnp.diag(chol)))


def search_lens_by_evidence(
    key: PRNGKeyArray,
    model,
    basis: Float[Array, "d k"],
    config: EvidenceSearchConfig = EvidenceSearchConfig(),
    mean: Float[Array, "sy sx"] | None = None,
) -> EvidenceSearchResult:
    """Find the lens that maximises ``log p(theta) + log p(y | theta)`` for a Gaussian source.

    Parameters
    ----------
    key
        PRNG key (the starting lenses are prior draws).
    model
        A :class:`~blindlens.numpyro_model.JointModel` whose source grid matches ``basis``
        (``basis.shape[0] == sy * sx``).
    basis
        ``L`` of the Gaussian source covariance ``S ≈ L L^T`` (:func:`covariance_basis`), in the
        model's image units.
    config
        :class:`EvidenceSearchConfig`.
    mean
        Optional prior mean of the source (``y - A_theta m`` replaces ``y``); default zero.

    Returns
    -------
    :class:`EvidenceSearchResult`; ``lens`` is the run with the highest final objective.
    """
    from .lens_space import LensSpace as _LensSpace

    d = model.source_shape[0] * model.source_shape[1]
    if basis.shape[0] != d:
        raise ValueError(f"basis has {basis.shape[0]} rows but the model's source grid has {d} pixels.")
    space = _LensSpace(model.lens_model)
    inv_var = jnp.where(model.mask, 1.0 / model.noise**2, 0.0)

    def objective(u):
        lens, log_prior = space.log_prior_and_lens(u)
        op = model.operator(lens, masked=True)
        data = model.source_data(lens)  # the image less any deflector light
        residual = data if mean is None else data - op(mean)
        return log_prior + gaussian_log_evidence(op, basis, residual, inv_var)

    @jax.jit
    def run(keys):
        starts = jax.vmap(lambda k: space.unconstrain(space.prior_draw(k)))(keys)
        return jax.vmap(lambda u0: adam_maximise(objective, u0, config.num_steps, config.learning_rate))(starts)

    u, values = run(jr.split(key, config.num_starts))
    best = jnp.argmax(values)
    runs = jax.vmap(space.constrain)(u)
    return EvidenceSearchResult({n: v[best] for n, v in runs.items()}, values, runs)


def default_search_basis(prior, model, config: EvidenceSearchConfig) -> Float[Array, "d k"]:
    """The basis for ``prior``: its own eigenmodes if it is Gaussian, else a data-scaled SE process."""
    if isinstance(prior, GaussianSourcePrior):  # reuse the prior's eigendecomposition
        return _eigenmode_basis(prior.eigvals, prior.eigvecs, config.variance_fraction)
    amplitude = jnp.sqrt(data_pixel_variance(model.image, model.noise, model.mask))
    shape = (config.source_pixels, config.source_pixels)
    cov = squared_exponential_covariance(shape, config.correlation_pixels, 1.0)
    return covariance_basis(cov, config.variance_fraction) * amplitude


def evidence_search_model(prior, model, lens_model, observation, source_grid, supersampling, operator_factory,
                          config: EvidenceSearchConfig):
    """The joint model a lens search evaluates: ``model`` itself for a Gaussian prior (its evidence is
    exact), else the same lens model and observation on a coarse ``config.source_pixels`` grid over
    the same field, for the squared-exponential stand-in."""
    from ..physics.grid import PixelGrid
    from .numpyro_model import joint_model

    if isinstance(prior, GaussianSourcePrior):
        return model
    if operator_factory is not None:
        raise ValueError(
            "lens_search builds its own coarse lensing operator and cannot use a custom "
            "operator_factory; pass lens_search=None or a GaussianSourcePrior."
        )
    p = config.source_pixels
    field = source_grid.shape[0] * source_grid.pixel_scale
    coarse = PixelGrid((p, p), field / p, tuple(source_grid.center))
    return joint_model(lens_model, observation, coarse, supersampling=supersampling)


def search_kernel_lens(kernel, key: PRNGKeyArray) -> EvidenceSearchResult:
    """The multi-start evidence search of a :class:`~blindlens.gibbs_kernel.BlindLensGibbs` (its ``lens_search``).

    For a Gaussian prior the evidence is exact and its best run is the answer. For the score prior
    the evidence is that of a squared-exponential stand-in, which can favour unphysical lenses, so
    the runs are ranked by the residual chi^2 of one source draw of the kernel's own source step
    at each run's lens.
    """
    from .numpyro_model import lens_from_values

    config = kernel.lens_search if kernel.lens_search is not None else EvidenceSearchConfig()
    model = getattr(kernel, "_search_model", None) or evidence_search_model(
        kernel.prior, kernel.joint_model, kernel.joint_model.lens_model, kernel.observation, kernel.source_grid, 1,
        None, config,
    )
    k_search, k_select = jr.split(key)
    basis = default_search_basis(kernel.prior, model, config)
    gaussian = isinstance(kernel.prior, GaussianSourcePrior)
    found = search_lens_by_evidence(k_search, model, basis, config, mean=kernel.prior.mean if gaussian else None)
    if gaussian or config.num_starts == 1:
        return found
    jm = kernel.joint_model

    def chi2_of_run(values, k):
        source = kernel.draw_source(k, values)
        return jm.residual_chi2(lens_from_values(jm.lens_model, values), source)

    chi2 = jax.lax.map(lambda a: chi2_of_run(a[0], a[1]), (found.runs, jr.split(k_select, config.num_starts)))
    best = jnp.argmin(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf))
    return found._replace(lens={n: v[best] for n, v in found.runs.items()})
