"""The lens parameters in NumPyro's unconstrained space: one flat vector per lens.

Every lens-space optimiser and sampler of blindlens (the pre-fit, the evidence search, the
continuous-time GibbsDDRM, the chain starts) moves a flat unconstrained vector ``u``;
:class:`LensSpace` maps it to the constrained site values of the user's NumPyro lens model through
NumPyro's bijections (``biject_to(support)``), with the log prior and the Jacobian.

References
----------
Phan, Pradhan & Jankowiak 2019, arXiv:1912.11554 (NumPyro's unconstrained-space potentials).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import jax.random as jr
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree

from .._types import Array, Float, PRNGKeyArray
from .numpyro_model import lens_log_prior, lens_site_names

__all__ = ["LensSpace", "lens_unconstrained"]


class LensSpace:
    """Bijection between a flat unconstrained vector and the constrained lens sites."""

    def __init__(self, lens_model: Callable):
        self.lens_model = lens_model
        self.names = lens_site_names(lens_model)
        box = {}

        def wrapped():
            box["lens"] = lens_model()

        tr = numpyro.handlers.trace(numpyro.handlers.seed(wrapped, jr.key(0))).get_trace()
        self.transforms = {n: dist.biject_to(tr[n]["fn"].support) for n in self.names}
        example = {n: jnp.asarray(self.transforms[n].inv(tr[n]["value"])) for n in self.names}
        flat, self._unravel = ravel_pytree(example)
        self.size = flat.size

    def constrain(self, u: Float[Array, " d"]) -> dict:
        tree = self._unravel(u)
        return {n: self.transforms[n](tree[n]) for n in self.names}

    def complete(self, values: Mapping[str, Array]) -> dict:
        """``values`` as arrays, one per lens site; a missing site is refused by name."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"init_lens lacks the lens sites {missing}; give a value for every site.")
        return {n: jnp.asarray(values[n]) for n in self.names}

    def unconstrain(self, values: Mapping[str, Array]) -> Float[Array, " d"]:
        tree = {n: jnp.asarray(self.transforms[n].inv(v)) for n, v in self.complete(values).items()}
        return ravel_pytree(tree)[0]

    def log_prior_and_lens(self, u):
        """``(lens, log p(theta(u)) + log |d theta / d u|)``."""
        tree = self._unravel(u)
        values = {n: self.transforms[n](tree[n]) for n in self.names}
        log_det = sum(
            jnp.sum(self.transforms[n].log_abs_det_jacobian(tree[n], values[n])) for n in self.names
        )
        lens, logp = lens_log_prior(self.lens_model, values)
        return lens, logp + log_det

    def prior_draw(self, key: PRNGKeyArray) -> dict:
        """Constrained values of one draw from the lens prior."""
        tr = numpyro.handlers.trace(numpyro.handlers.seed(self.lens_model, key)).get_trace()
        return {n: tr[n]["value"] for n in self.names}


def lens_unconstrained(lens_model: Callable, values: Mapping[str, Array]) -> dict[str, Array]:
    """Map constrained lens-site values to NumPyro's unconstrained space (for ``init_params``).

    NUTS blocks of NumPyro's ``Gibbs`` take unconstrained initial values; use this to start
    :class:`~blindlens.gibbs_kernel.BlindLensGibbs` at a given lens: ``init_params={**lens_unconstrained(model, v),
    "source": s}``.
    """
    space = LensSpace(lens_model)
    return {n: space.transforms[n].inv(jnp.asarray(values[n])) for n in space.names}
