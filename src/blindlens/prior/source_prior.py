"""The interface of a diffusion source prior.

A source prior is anything that knows the noised score ``grad_x log p_t(x)`` of the source
distribution under a :class:`~blindlens.diffusion_sde.VESDE`, in *physical* pixel units (the
units of the observed image, since lensing conserves surface brightness). The trained score
network (:class:`blindlens.ScorePrior`) and the analytic Gaussian / Gaussian-mixture priors
used by the exact tests all implement it, so samplers never know which one they got.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax

from .._types import Array, Float
from .diffusion_sde import VESDE

__all__ = ["AbstractSourcePrior"]


class AbstractSourcePrior(eqx.Module):
    """A source distribution known through its VE-noised scores.

    Subclasses provide :attr:`sde`, :attr:`shape`, :attr:`pixel_scale` and :meth:`score`.
    """

    @property
    @abc.abstractmethod
    def sde(self) -> VESDE:
        """The VE SDE whose marginals the score refers to (physical units)."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """Source array shape ``(sy, sx)``."""

    @property
    @abc.abstractmethod
    def pixel_scale(self) -> float:
        """Source-plane pixel scale in arcsec/pixel the prior was built for."""

    @abc.abstractmethod
    def score(self, x: Float[Array, "sy sx"], t: Float[Array, ""]) -> Float[Array, "sy sx"]:
        """``grad_x log p_t(x)`` at diffusion time ``t``."""

    def denoise(self, x: Float[Array, "sy sx"], t: Float[Array, ""]) -> Float[Array, "sy sx"]:
        """Tweedie's posterior mean ``E[x_0 | x_t = x] = x + sigma(t)^2 score(x, t)``."""
        return x + self.sde.sigma(t) ** 2 * self.score(x, t)

    def denoise_and_vjp(self, x, t):
        """``(x0_hat, vjp_fn)`` with ``vjp_fn(v) = (d x0_hat / d x)^T v`` (for PiGDM-type scores)."""
        x0, vjp = jax.vjp(lambda z: self.denoise(z, t), x)
        return x0, lambda v: vjp(v)[0]
