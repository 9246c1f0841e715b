"""Shared fixture builder for the exact Gaussian-posterior tests (data-and-validation.md §B.2).

A 16x16 source with a squared-exponential Gaussian-process prior (length 2 px, unit amplitude,
relative jitter 1e-4 so the smallest posterior std is ~0.01), an SIS lens ray-traced into a
24x24 image with a Gaussian PSF of sigma = 1 image pixel, and white noise sigma_n = 0.05. The
VE diffusion runs over sigma in [1e-3, 100]. The lensing operator is converted to a dense
matrix (exactly the same linear map) so that sampling is fast on a CPU.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr

from ..physics.grid import PixelGrid
from ..physics.lens_models import SIS
from ..physics.lensing_operator import LensingOperator
from ..physics.linear_operator import DenseOperator
from ..physics.psf import gaussian_psf
from ..prior.diffusion_sde import VESDE
from ..prior.gaussian_prior import (
    GaussianMixtureSourcePrior,
    GaussianSourcePrior,
    squared_exponential_covariance,
)

SOURCE_FIELD = 0.8  # arcsec
IMAGE_FIELD = 1.92  # arcsec
NOISE_SIGMA = 0.05


def lensing_operator(ns=16, ni=24, theta_E=0.5, mask=None) -> LensingOperator:
    image_grid = PixelGrid((ni, ni), IMAGE_FIELD / ni)
    source_grid = PixelGrid((ns, ns), SOURCE_FIELD / ns, (0.03, -0.02))
    fwhm = 2.0 * (2.0 * jnp.log(2.0)) ** 0.5 * image_grid.pixel_scale  # sigma = 1 image pixel
    psf = gaussian_psf(float(fwhm), image_grid.pixel_scale)
    return LensingOperator(SIS(theta_E, 0.0, 0.0), image_grid, source_grid, psf=psf, mask=mask)


def gaussian_problem(key, ns=16, ni=24, theta_E=0.5, noise_sigma=NOISE_SIGMA, dense=True):
    """Return ``(prior, operator, data, noise_sigma, truth)`` with ``truth ~ prior``."""
    sde = VESDE(1e-3, 100.0)
    prior = GaussianSourcePrior.squared_exponential(
        (ns, ns), 2.0 * ns / 16, sde, SOURCE_FIELD / ns, jitter=1e-4
    )
    op = lensing_operator(ns, ni, theta_E)
    if dense:
        op = DenseOperator(op.as_dense(), (ns, ns), (ni, ni))
    k_truth, k_noise = jr.split(key)
    truth = prior.sample(k_truth, 1)[0]
    data = op(truth) + noise_sigma * jr.normal(k_noise, (ni, ni))
    return prior, op, data, noise_sigma, truth


def mixture_problem():
    """A two-mode Gaussian-mixture prior on an 8x8 source, SIS + PSF, sigma_n = 0.5 (V-11):
    returns ``(prior, operator, data, noise_sigma)``; the posterior weight of mode 0 is ~0.36."""
    ns, ni = 8, 12
    op = lensing_operator(ns, ni, 0.4)
    op = DenseOperator(op.as_dense(), (ns, ns), (ni, ni))
    yy, xx = jnp.mgrid[:ns, :ns]
    blob_a = jnp.exp(-((xx - 2.5) ** 2 + (yy - 3.5) ** 2) / 4.0)
    blob_b = jnp.exp(-((xx - 5.0) ** 2 + (yy - 4.0) ** 2) / 4.0)
    cov = squared_exponential_covariance((ns, ns), 1.5, 0.1, 1e-2)
    prior = GaussianMixtureSourcePrior(
        jnp.array([0.5, 0.5]), jnp.stack([blob_a, blob_b]), jnp.stack([cov, cov]), VESDE(1e-3, 100.0), 0.05
    )
    sigma = 0.5
    y = op(0.6 * blob_a + 0.4 * blob_b) + sigma * jr.normal(jr.key(0), (ni, ni))
    return prior, op, y, sigma


def posterior_metrics(posterior, samples, sigma_final=0.0):
    """Whitened chi^2/d, mean offset, per-eigenmode variance ratios, and their expected values.

    With a final Tweedie denoise from residual noise ``sigma_final`` the exact sampler returns
    ``E[s | x_tf]``, whose variance along posterior eigenmode ``i`` is
    ``c_i (1 - sigma_final^2 / (c_i + sigma_final^2))``: that ratio is the expected value.
    """
    z = posterior.whiten(samples)
    m, d = z.shape
    ratios = jnp.mean(z**2, axis=0)
    expected = 1.0 - sigma_final**2 / (posterior.eigvals + sigma_final**2)
    return {
        "chi2_per_dim": float(jnp.mean(z**2)),
        "chi2_expected": float(jnp.mean(expected)),
        "chi2_sd": float(jnp.sqrt(2.0 * jnp.mean(expected**2) / (d * m))),
        "mean_offset": float(m * jnp.sum(jnp.mean(z, axis=0) ** 2 / expected) / d),
        "mean_offset_sd": float(jnp.sqrt(2.0 / d)),
        "ratio_normalised": ratios / expected,
        "ratio_sd": float(jnp.sqrt(2.0 / m)),
        "num_samples": m,
        "dim": d,
    }


def band_failures(m, z_scalar=4.0, z_modes=4.0):
    """Which of the three checks on :func:`posterior_metrics` output fall outside their bands
    (``chi2``, ``mean_offset``, ``mode_variance``; an empty list means calibrated)."""
    out = []
    if abs(m["chi2_per_dim"] - m["chi2_expected"]) > z_scalar * m["chi2_sd"]:
        out.append("chi2")
    if abs(m["mean_offset"] - 1.0) > z_scalar * m["mean_offset_sd"]:
        out.append("mean_offset")
    r = m["ratio_normalised"]
    if float(r.min()) < 1 - z_modes * m["ratio_sd"] or float(r.max()) > 1 + z_modes * m["ratio_sd"]:
        out.append("mode_variance")
    return out
