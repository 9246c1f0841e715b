"""Why the lens mixes slowly in split-Gibbs runs, and a transport move that did not fix it (issue 18).

On one observation with a finished run (its ``post.nc`` gives the starting lens), three measurements:

1. **The source's pace** (true to the sweep's source move, lens held fixed): ``--moves`` split-Gibbs
   moves of the source at the posterior-mean lens; after each, the shift of the lens conditional's
   centre ``H^-1 grad log p(theta | s, y)`` in units of the conditional sd. Its sd says how far the
   source drags the lens, its ESS per move how fast the source forgets the lens-relevant directions.
2. **The ridge**: the lens sd with the source marginalised under a Gaussian source prior
   ``N(0, tau^2 I)`` (Schur complement of the joint Fisher matrix) against the conditional sd
   ``sqrt(diag H^-1)`` given the current source. A two-block Gibbs sampler on a Gaussian with
   marginal/conditional sd ratio ``r`` has lag-one autocorrelation ``1 - 1/r^2``.
3. **A transport move** against the plain sweep, in the pure core (same keys): after each sweep,
   ``--proposals`` Metropolis proposals ``theta' = theta + eps``, ``eps ~ N(0, (2.38^2/d) Sigma)``
   (``Sigma`` the collapsed covariance of 2., fixed after ``--adapt`` sweeps), that carry the source
   along, ``s' = s + J eps`` with ``J = -(A^T W A + I/tau^2)^-1 A^T W dA s/dtheta`` (a translation:
   unit Jacobian), accepted with the exact likelihood ratio and the prior ratio
   ``log p_f(s') - log p_f(s)`` from a Gauss-Legendre line integral of the network's score at the
   split-Gibbs move's noise floor. Lens ESS of both chains over the kept sweeps.

Usage::

    JAX_PLATFORMS=cpu python scripts/lens_mixing_diagnosis.py SYSTEM_DIR --center X Y [--prior highres]

``SYSTEM_DIR`` holds ``obs.fits`` and ``post.nc`` (a cold-start study system); ``--center`` is the
source-grid centre its run used (printed in its ``sample.log``). Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import arviz as az
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from numpyro.diagnostics import effective_sample_size

from blindlens.inference.gibbs_core import GibbsCore
from blindlens.inference.gibbs_kernel import BlindLensGibbs
from blindlens.inference.numpyro_model import sie_shear
from blindlens.io.observation import load_observation
from blindlens.physics.grid import PixelGrid
from blindlens.physics.linear_operator import conjugate_gradient
from blindlens.source.split_gibbs import SplitGibbsConfig
from blindlens.source_setup import load_source_prior


def setup(args):
    prior = load_source_prior(args.prior)
    obs = load_observation(os.path.join(args.system, "obs.fits"))
    grid = PixelGrid(tuple(prior.shape), float(prior.pixel_scale), tuple(args.center))
    model = BlindLensGibbs(sie_shear, obs, prior, source_grid=grid, split_gibbs=SplitGibbsConfig()).joint_model
    core = GibbsCore.default(sie_shear, prior, model, split_gibbs=SplitGibbsConfig(), num_warmup=args.adapt)
    post = az.from_netcdf(os.path.join(args.system, "post.nc")).posterior
    start = {n: jnp.asarray(float(post[n].values.mean())) for n in core.space.names}
    return prior, model, core, start


def collapsed(core, model, u, s, tau, cg_iterations):
    """``(J, Sigma, H^-1)``: transport directions, collapsed and conditional lens covariances at ``(u, s)``."""
    op = model.operator(core.lens_of(u), masked=True)
    weight = jnp.where(model.mask, 1.0 / model.noise**2, 0.0)
    jac = jnp.moveaxis(jax.jacfwd(lambda v: model.operator(core.lens_of(v), masked=True)(s))(u), -1, 0)

    def normal(v):
        return op.adjoint(weight * op(v)) + v / tau**2

    basis = jax.vmap(lambda g: -conjugate_gradient(normal, op.adjoint(weight * g), 1e-6, cg_iterations)[0])(jac)
    fisher = jnp.einsum("kij,lij->kl", jac * weight, jac + jax.vmap(op)(basis))
    hess = jax.hessian(lambda v: core.potential(v, s, model))(u)
    return basis, jnp.linalg.inv(fisher), jnp.linalg.inv(hess)


def source_pace(args, prior, model, core, start):
    state = core.init(jr.key(args.seed), model, start)
    u = state.lens
    op, data, noise = core._source_inputs(u, model)
    move = jax.jit(lambda k, s: core.source_move(k, op, data, noise, s))
    grad = jax.jit(jax.grad(lambda v, s: -core.potential(v, s, model)))
    cov = jnp.linalg.inv(jax.hessian(lambda v: core.potential(v, state.source, model))(u))
    sd = jnp.sqrt(jnp.diag(cov))
    key, s, shifts = jr.key(args.seed + 1), state.source, []
    for _ in range(args.moves):
        key, k = jr.split(key)
        s = move(k, s)
        shifts.append(np.asarray((cov @ grad(u, s)) / sd))
    kept = np.array(shifts)[args.moves // 5:]
    ess = [float(effective_sample_size(kept[None, :, j])) / len(kept) for j in range(kept.shape[1])]
    names = core.space.names
    return {"measure": "source_pace", "moves": args.moves,
            "shift_sd_in_conditional_sd": dict(zip(names, np.round(kept.std(0), 3).tolist())),
            "ess_per_move": dict(zip(names, np.round(ess, 3).tolist()))}


def chains(args, prior, model, core, start):
    t_floor = SplitGibbsConfig().t_final
    nodes, weights = np.polynomial.legendre.leggauss(args.nodes)
    nodes, weights = 0.5 * (nodes + 1.0), 0.5 * weights

    def log_prior_ratio(s, ds):
        return sum(w * jnp.vdot(prior.score(s + t * ds, jnp.asarray(t_floor)), ds) for t, w in zip(nodes, weights))

    @jax.jit
    def transport(key, u, s, basis, chol):
        def one(carry, k):
            u, s = carry
            k_eps, k_acc = jr.split(k)
            eps = chol @ jr.normal(k_eps, u.shape, u.dtype)
            ds = jnp.tensordot(eps, basis, 1)
            log_a = core.potential(u, s, model) - core.potential(u + eps, s + ds, model) + log_prior_ratio(s, ds)
            ok = jnp.log(jr.uniform(k_acc)) < log_a
            return (jnp.where(ok, u + eps, u), jnp.where(ok, s + ds, s)), jnp.minimum(1.0, jnp.exp(log_a))

        (u, s), probs = jax.lax.scan(one, (u, s), jr.split(key, args.proposals))
        return u, s, probs

    sweep = jax.jit(lambda k, st: core.sweep(k, st, model))
    setup_fn = jax.jit(lambda u, s: collapsed(core, model, u, s, args.tau, args.cg_iterations))
    names, out = core.space.names, []
    for mode in ("plain", "transport"):
        key = jr.key(args.seed)
        state = core.init(key, model, start)
        trace, probs, t0, chol = [], [], time.time(), None
        for i in range(args.sweeps):
            key, k_sweep, k_move = jr.split(key, 3)
            state, _ = sweep(k_sweep, state)
            if mode == "transport" and i >= args.adapt:
                if chol is None:
                    basis, sigma, cond = setup_fn(state.lens, state.source)
                    chol = 2.38 / np.sqrt(len(names)) * jnp.linalg.cholesky(sigma)
                    ratio = np.sqrt(np.diag(sigma) / np.diag(cond))
                u, s, p = transport(k_move, state.lens, state.source, basis, chol)
                probs.append(np.asarray(p))
                state = state._replace(lens=u, source=s)
            values = core.lens_values(state.lens)
            trace.append([float(values[n]) for n in names])
        kept = np.array(trace)[args.adapt:]
        ess = [float(effective_sample_size(kept[None, :, j])) for j in range(len(names))]
        row = {"measure": "chain", "mode": mode, "sweeps_kept": len(kept), "wall_s": round(time.time() - t0, 1),
               "ess": dict(zip(names, np.round(ess, 1).tolist())), "min_ess_per_sweep": round(min(ess) / len(kept), 4)}
        if mode == "transport":
            row.update(acceptance=round(float(np.mean(probs)), 3), tau=args.tau, proposals=args.proposals,
                       collapsed_over_conditional_sd=dict(zip(names, np.round(ratio, 2).tolist())))
        out.append(row)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("system", help="folder with obs.fits and post.nc")
    p.add_argument("--center", type=float, nargs=2, required=True, help="source-grid centre of the run (arcsec)")
    p.add_argument("--prior", default="highres")
    p.add_argument("--moves", type=int, default=250, help="source moves at the fixed lens (1.)")
    p.add_argument("--sweeps", type=int, default=300, help="sweeps per chain (3.)")
    p.add_argument("--adapt", type=int, default=30, help="sweeps before the transport move starts (and dropped)")
    p.add_argument("--tau", type=float, default=0.05, help="sd of the Gaussian source prior of the transport")
    p.add_argument("--proposals", type=int, default=2, help="transport proposals per sweep")
    p.add_argument("--nodes", type=int, default=4, help="Gauss-Legendre nodes of the prior-ratio line integral")
    p.add_argument("--cg-iterations", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    prior, model, core, start = setup(args)
    print(json.dumps(source_pace(args, prior, model, core, start)), flush=True)
    for row in chains(args, prior, model, core, start):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
