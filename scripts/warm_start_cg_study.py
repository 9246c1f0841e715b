"""The warm start's conjugate-gradient cap: cost and fit of the chains' starts (issue 18, start-up).

The warm start runs ``2 x warm_start_tries`` continuous-time trajectories (PiGDM, 200 steps) from
the pre-fit's lens and gives the chains the best-fitting ones
(:func:`blindlens.inference.chain_starts.pooled_chain_starts`). Each PiGDM step solves
``(Sigma + r_t^2 A A^T) u = y - A x0`` by conjugate gradients, which run into their 100-iteration
cap at every step with ``t >= 0.5`` (docs/performance.md). Per system, exactly as ``blindlens sample``
sets it up (pre-fit, grid centre, ``pipeline.build_kernel``), the pooled starts once per cap, same
key: wall time of the pool (compilation included), chi^2/N of every trajectory, of the chains'
starts, and the best start's lens offsets from the truth in units of the default run's posterior sd
where a posterior is given.

Usage::

    JAX_PLATFORMS=cpu python scripts/warm_start_cg_study.py SYSTEM_DIR [SYSTEM_DIR ...] --caps image:100 source:50

``SYSTEM_DIR`` holds ``obs.fits`` and ``truth.npz`` (``scripts/lenstronomy_systems.py``). Prints JSON
lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.random as jr
import numpy as np

from blindlens.inference.chain_starts import pooled_chain_starts
from blindlens.inference.gibbsddrm import GibbsDDRMConfig
from blindlens.inference.lens_space import LensSpace
from blindlens.inference.numpyro_model import lens_site_names, nuisance_site_names
from blindlens.io.observation import load_observation
from blindlens.io.simulation import load_truth
from blindlens.pipeline import (
    DEFAULTS,
    build_kernel,
    load_lens_model,
    run_lens_model,
    source_grid_center,
    truth_values,
)
from blindlens.source_setup import load_source_prior, resolve_prior_spec


def study(folder: str, caps, seed: int):
    obs = load_observation(os.path.join(folder, "obs.fits"))
    truth = load_truth(os.path.join(folder, "truth.npz"))
    prior = load_source_prior(resolve_prior_spec(DEFAULTS.prior, obs))
    lens_model = run_lens_model(load_lens_model(DEFAULTS.lens_model), DEFAULTS, obs, prior)
    t0 = time.time()
    center, prefit = source_grid_center(DEFAULTS, lens_model, obs)
    prefit_s = time.time() - t0
    kernel = build_kernel(lens_model, obs, prior, DEFAULTS, center=center, prefit=prefit)
    jm = kernel.joint_model
    n = int(np.sum(np.asarray(jm.mask)))
    sites = [s for s in lens_site_names(lens_model) if s not in nuisance_site_names(lens_model)]
    true = truth_values(truth["lens"], sites)
    for cap in caps:
        cg_space, _, cap = cap.rpartition(":") if ":" in cap else ("source", ":", cap)
        base = kernel.warm_start if kernel.warm_start is not None else GibbsDDRMConfig()
        guidance = dataclasses.replace(base.guidance, cg_maxiter=int(cap), cg_space=cg_space)
        kernel.warm_start = dataclasses.replace(base, guidance=guidance)
        jax.clear_caches()
        t0 = time.time()
        starts = pooled_chain_starts(kernel, jr.key(seed), DEFAULTS.chains)
        seconds = time.time() - t0
        space = LensSpace(jm.lens_model)
        values = {s: np.asarray(space.transforms[s](starts.init_params[s])) for s in sites}
        fit = np.asarray(starts.chi2) / n
        row = {"system": folder, "cap": int(cap), "cg_space": cg_space, "pool_seconds": round(seconds, 1), "prefit_seconds": round(prefit_s, 1),
               "true_chi2": round(float(truth["true_chi2_per_n"]), 4),
               "tries_chi2": [round(float(v), 4) for v in np.sort(fit)],
               "starts_chi2": [round(float(fit[i]), 4) for i in np.asarray(starts.chosen)],
               "start_lens_minus_truth": {s: [round(float(v - true[s]), 5) for v in values[s]] for s in sites}}
        print(json.dumps(row), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("systems", nargs="+", help="folders with obs.fits and truth.npz")
    p.add_argument("--caps", nargs="+", default=["image:100", "source:100", "source:50"],
                   help="CG caps, each N or SPACE:N with SPACE image (the solve before 2026-12-07) or source "
                        "(the default since; PiGDM's cg_space)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for folder in args.systems:
        study(folder, args.caps, args.seed)


if __name__ == "__main__":
    main()
