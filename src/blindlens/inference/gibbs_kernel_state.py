"""The state a :class:`~blindlens.gibbs_kernel.BlindLensGibbs` chain shows NumPyro.

The kernel's sweep is the pure core's (:mod:`blindlens.gibbs_core`); NumPyro's ``MCMC`` and
``arviz.from_numpyro`` expect a state with HMC-like fields. :class:`BlindLensGibbsState` wraps the
core's state and the last sweep's :class:`~blindlens.gibbs_core.SweepInfo` and exposes them under
NumPyro's names; :func:`sites_postprocess` maps the collected field back to the model's sites.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from numpyro.infer.util import constrain_fn

from .._types import Array, PRNGKeyArray
from .gibbs_core import GibbsCoreState, SweepInfo
from .numpyro_model import SOURCE_SITE

__all__ = ["BlindLensGibbsState", "SOURCE_STATE_KEY", "sites_postprocess", "batched_key"]


SOURCE_STATE_KEY = "_source_state"
"""Key of the source in :attr:`BlindLensGibbsState.sites` (renamed back to ``"source"`` on collection)."""


def sites_postprocess(model, sites):
    """``BlindLensGibbs.postprocess_fn``: the collected view back to site names, constrained, deterministic sites replayed."""
    z = {k: v for k, v in sites.items() if k != SOURCE_STATE_KEY}
    z[SOURCE_SITE] = sites[SOURCE_STATE_KEY]
    return constrain_fn(model, (), {}, z, return_deterministic=True)


def batched_key(key) -> bool:
    """Whether ``key`` is one key per chain (NumPyro's ``chain_method="vectorized"``), typed or raw."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key.ndim > (0 if typed else 1)


class _AdaptView(NamedTuple):
    """NumPyro's ``adapt_state`` names for the core's adapted step size and metric."""

    step_size: Array
    inverse_mass_matrix: Array


class BlindLensGibbsState(NamedTuple):
    """State of one :class:`BlindLensGibbs` chain: the core's state, the last sweep's info and a key.

    ``z`` is NumPyro's ``{site: value}`` (lens sites unconstrained, and the ``source``);
    :attr:`sites` is the kernel's ``sample_field``. The sweep's statistics are exposed under
    NumPyro's names (``potential_energy``, ``energy``, ``diverging``, ``accept_prob``,
    ``num_steps``, ``adapt_state.step_size``, ``i``, ``num_score_evals``), so ``MCMC``'s
    ``extra_fields`` and ``arviz.from_numpyro`` find them.
    """

    z: dict
    core: GibbsCoreState
    info: SweepInfo
    rng_key: PRNGKeyArray

    @property
    def sites(self) -> dict:
        """``z`` with the source under a private key: the field ``numpyro.infer.MCMC`` collects.

        ``BlindLensGibbs.postprocess_fn`` maps it back, so ``mcmc.get_samples()`` has the lens
        sites and ``"source"`` as usual, while ``mcmc.print_summary()`` (which lists only the
        collected sites that are keys of this field, hiding deterministic sites) shows the lens
        parameters and not one row per source pixel.
        """
        z = {k: v for k, v in self.z.items() if k != SOURCE_SITE}
        z[SOURCE_STATE_KEY] = self.z[SOURCE_SITE]
        return z

    @property
    def adapt_state(self) -> _AdaptView:
        return _AdaptView(jnp.exp(self.core.log_step_size), self.core.inverse_mass)

    potential_energy = property(lambda self: self.info.potential_energy)
    energy = property(lambda self: self.info.energy)  # Hamiltonian: ArviZ plot_energy / BFMI
    diverging = property(lambda self: self.info.diverging)
    accept_prob = property(lambda self: self.info.accept_prob)
    num_steps = property(lambda self: self.info.num_steps)
    chi2 = property(lambda self: self.info.chi2)
    i = property(lambda self: self.core.iteration)
    num_score_evals = property(lambda self: self.core.num_score_evals)
