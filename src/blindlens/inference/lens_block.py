"""The lens block of the Gibbs kernel: NumPyro NUTS with the local curvature of ``p(theta | s, y)`` as its metric.

:class:`LensNUTS` is the default lens block of :class:`~blindlens.gibbs_kernel.BlindLensGibbs`:
NUTS on the lens sites given the source (which it reads from NumPyro's Gibbs conditioning), with
the dense inverse mass matrix ``|H|^{-1}`` (SoftAbs of the Hessian of ``-log p(theta, y | s)``,
:func:`blindlens.gibbsddrm._metric`) recomputed at every warm-up transition and frozen after it,
and a Robbins-Monro step-size adaptation in place of NumPyro's dual averaging.

References
----------
Hoffman & Gelman 2014, JMLR 15, 1593 (NUTS). Betancourt 2013, "A General Metric for Riemannian
Manifold HMC" (SoftAbs). Andrieu & Thoms 2008, Stat. Comput. 18, 343 (Robbins-Monro adaptation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
from jax.flatten_util import ravel_pytree
from numpyro.infer import NUTS
from numpyro.infer.gibbs import GIBBS_SITES_KWARG
from numpyro.infer.hmc_util import (
    _initialize_mass_matrix,  # NumPyro's own (inverse, sqrt, sqrt_inv) triple
)
from numpyro.infer.hmc_util import build_tree, euclidean_kinetic_energy, velocity_verlet

from .._types import Array, Float, Int, PRNGKeyArray, SourceImage
from .gibbsddrm import _metric
from .lens_space import LensSpace as _LensSpace
from .numpyro_model import SOURCE_SITE, JointModel

__all__ = ["LensNUTS", "NUTSTransition", "nuts_transition"]


class NUTSTransition(NamedTuple):
    """One NUTS transition of the lens (:func:`nuts_transition`).

    ``u`` (new position), ``potential_energy`` (at ``u``), ``energy`` (Hamiltonian of the
    proposal: ArviZ's ``energy`` for BFMI), ``accept_prob`` (mean Metropolis acceptance over the
    tree), ``diverging`` and ``num_steps`` (leapfrog steps, ``2^depth - 1`` for a full tree).
    """

    u: Float[Array, " d"]
    potential_energy: Float[Array, ""]
    energy: Float[Array, ""]
    accept_prob: Float[Array, ""]
    diverging: Array
    num_steps: Int[Array, ""]


def nuts_transition(
    key: PRNGKeyArray,
    u: Float[Array, " d"],
    potential: Callable[[Array], Array],
    inverse_mass: Float[Array, "d d"],
    step_size: Float[Array, ""],
    max_tree_depth: int | tuple,
    max_delta_energy: float = 1000.0,
) -> NUTSTransition:
    """One NUTS transition of a flat position ``u`` under ``potential`` with a dense metric: a pure function.

    The momentum is drawn ``p ~ N(0, M)`` with ``M = inverse_mass^{-1}``, and NumPyro's
    multinomial NUTS tree (``numpyro.infer.hmc_util.build_tree``, Hoffman & Gelman 2014 with
    Betancourt 2017's multinomial sampling) is built with velocity-Verlet steps of ``step_size``.
    The same transition :class:`LensNUTS` makes inside NumPyro's kernel, without a NumPyro
    state: :class:`~blindlens.gibbs_core.GibbsCore`'s ``lens_move="nuts"`` calls it with the
    lens conditional of the current source and observation, both traced data.

    Parameters
    ----------
    key
        PRNG key (momentum and tree).
    u
        Current position ``(d,)`` (unconstrained lens coordinates).
    potential
        ``potential(u) -> -log p`` (scalar, differentiable).
    inverse_mass
        ``M^{-1}``, ``(d, d)``, symmetric positive definite.
    step_size
        Leapfrog step size.
    max_tree_depth
        Largest tree depth; or ``(current, largest)`` with a traced ``current`` (NumPyro's form).
    max_delta_energy
        Energy error above which a trajectory counts as divergent.
    """
    k_p, k_tree = jr.split(key)
    mass = jnp.linalg.inv(inverse_mass)
    chol = jnp.linalg.cholesky(0.5 * (mass + mass.T))
    p = chol @ jr.normal(k_p, u.shape, u.dtype)
    vv_init, vv_update = velocity_verlet(potential, euclidean_kinetic_energy)
    state = vv_init(u, p)
    tree = build_tree(vv_update, euclidean_kinetic_energy, state, inverse_mass, step_size, k_tree,
                      max_delta_energy=max_delta_energy, max_tree_depth=max_tree_depth)
    return NUTSTransition(
        u=tree.z_proposal,
        potential_energy=tree.z_proposal_pe,
        energy=tree.z_proposal_energy,
        accept_prob=tree.sum_accept_probs / tree.num_proposals,
        diverging=tree.diverging,
        num_steps=jnp.asarray(tree.num_proposals, jnp.int32),
    )


class LensNUTS(NUTS):
    """NumPyro NUTS for the lens block, with the local curvature of ``p(theta | s, y)`` as its metric.

    Lens parameters live on very different scales once the source is given (posterior sds from
    ``1e-3`` arcsec for ``theta_E`` to ``3e-2`` for poorly constrained ellipticity directions, with
    strong correlations), and a Gibbs run has far too few warm-up transitions for NumPyro's
    windowed mass-matrix adaptation: with the identity metric the step size collapses to the
    tightest direction and every transition saturates the tree depth while moving
    ``theta_E`` by a third of its conditional sd. This kernel instead uses the dense inverse
    mass matrix

        M^{-1} = |H|^{-1},   H = -d^2 log p(theta, y | s) / du^2

    (``u``: NumPyro's unconstrained lens coordinates; ``|H|`` has the absolute eigenvalues of
    ``H``, floored at ``1e-2``: the SoftAbs map of Betancourt 2013, so the metric is positive
    definite away from the mode too). ``H`` is recomputed from the current lens and source at
    **every warm-up transition** (the source moves between them, and a chain started away from the
    posterior needs the curvature where it is now) and frozen afterwards, so the sampling phase is
    an ordinary fixed-metric NUTS chain, reversible with respect to ``p(theta | s, y)``. The step
    size starts at ``0.9`` (with a curvature metric the good step is O(1)) and adapts through
    warm-up by a Robbins-Monro update of ``log eps`` towards ``target_accept_prob`` with gain
    ``1 / sqrt(k + 1)`` (Andrieu & Thoms 2008, Stat. Comput. 18, 343); NumPyro's dual averaging
    (Hoffman & Gelman 2014, §3.2) shrinks towards ``log(10 eps_0)`` and, in the 20-transition
    warm-ups of a Gibbs run, was measured to end at step sizes 3.5-4.3 where every later proposal
    was rejected.

    Measured (``benchmarks/lens_block.py``, docs/joint_inference.md "Lens block"): on a
    calibration-study system 3 instead of 30.5 leapfrog steps per transition and a per-sweep
    ``theta_E`` move of 2.3e-3 instead of 3.5e-4 (its conditional sd is 1.1e-3).

    Parameters
    ----------
    model
        The :class:`~blindlens.numpyro_model.JointModel` (its ``log_likelihood`` gives ``H``).
    curvature_metric
        ``False`` gives plain NumPyro NUTS (identity metric, windowed adaptation as configured).
    step_size
        Initial leapfrog step size (in units of the metric).
    **kwargs
        Passed to :class:`numpyro.infer.NUTS` (``target_accept_prob``, ``max_tree_depth``, ...).
        With the curvature metric, ``dense_mass=True`` (default) uses the full ``|H|^{-1}`` and
        ``dense_mass=False`` its diagonal (the marginal variances).
    """

    def __init__(self, model: JointModel, *, curvature_metric: bool = True, step_size: float = 0.9, **kwargs):
        dense = True
        if curvature_metric:
            if kwargs.get("adapt_mass_matrix") or kwargs.get("inverse_mass_matrix") is not None:
                raise ValueError(
                    "LensNUTS(curvature_metric=True) sets the mass matrix itself; pass "
                    "curvature_metric=False to use adapt_mass_matrix or inverse_mass_matrix."
                )
            dense = kwargs.pop("dense_mass", True)
            if not isinstance(dense, bool):
                raise ValueError(
                    f"LensNUTS(curvature_metric=True) takes dense_mass=True (the full curvature metric) or False "
                    f"(its diagonal), got {dense!r}; pass curvature_metric=False for NumPyro's structured mass."
                )
            kwargs.update(adapt_mass_matrix=False, dense_mass=dense, adapt_step_size=False)
        super().__init__(model, step_size=step_size, **kwargs)
        self._joint = model
        self._curvature = curvature_metric
        self._dense_curvature = dense
        self._space = _LensSpace(model.lens_model)
        self._num_warmup = 0

    def curvature_inverse_mass(self, z: Mapping[str, Array], source: SourceImage) -> Float[Array, "d d"]:
        """``|H|^{-1}`` at unconstrained lens values ``z`` (site -> value) given ``source``."""
        flat, _ = ravel_pytree({n: jnp.asarray(z[n]) for n in self._space.names})

        def potential(u):
            lens, log_prior = self._space.log_prior_and_lens(u)
            return -(log_prior + self._joint.log_likelihood(lens, source))

        vec, lam = _metric(jax.hessian(potential)(flat))
        return (vec / lam) @ vec.T

    def _curvature_metric(self, z, source):
        """The inverse mass matrix NUTS uses: ``|H|^{-1}``, or its diagonal with ``dense_mass=False``."""
        inv = self.curvature_inverse_mass(z, source)
        return inv if self._dense_curvature else jnp.diag(inv)

    def _source(self, model_kwargs):
        sites = (model_kwargs or {}).get(GIBBS_SITES_KWARG, {})
        if SOURCE_SITE not in sites:
            raise ValueError("LensNUTS needs the source from Gibbs conditioning; use it inside BlindLensGibbs.")
        return sites[SOURCE_SITE]

    def _key(self):
        return tuple(sorted(self._space.names))

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        self._num_warmup = int(num_warmup)
        if not self._curvature or not init_params:
            return super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        saved = self._inverse_mass_matrix
        self._inverse_mass_matrix = {self._key(): self._curvature_metric(init_params, self._source(model_kwargs))}
        try:
            return super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        finally:
            self._inverse_mass_matrix = saved

    def sample(self, state, model_args, model_kwargs):
        if self._curvature and self._num_warmup > 0:
            source = self._source(model_kwargs)

            def recompute(state):
                inv = {self._key(): self._curvature_metric(state.z, source)}
                dense = [self._key()] if self._dense_curvature else []
                inv, sqrt, sqrt_inv = _initialize_mass_matrix(state.z, inv, dense)
                adapt = state.adapt_state._replace(
                    inverse_mass_matrix=inv, mass_matrix_sqrt=sqrt, mass_matrix_sqrt_inv=sqrt_inv
                )
                return state._replace(adapt_state=adapt)

            warming = state.i < self._num_warmup
            state = jax.lax.cond(warming, recompute, lambda s: s, state)
            new = super().sample(state, model_args, model_kwargs)
            # Robbins-Monro on log(step size) towards the target acceptance, gain 1/sqrt(k+1)
            eps = new.adapt_state.step_size
            log_eps = jnp.log(eps) + (new.accept_prob - self._target_accept_prob) / jnp.sqrt(state.i + 1.0)
            log_eps = jnp.clip(log_eps, jnp.log(1e-3), jnp.log(2.0))
            eps = jnp.where(warming, jnp.exp(log_eps), eps).astype(eps.dtype)
            return new._replace(adapt_state=new.adapt_state._replace(step_size=eps))
        return super().sample(state, model_args, model_kwargs)
