"""The seed's continuous-time sampler as a posterior sampler, measured on lenstronomy systems (issue 19).

For one cold-start study system (its ``obs.fits`` from ``scripts/cold_start_study.py``; the
study's JSONL line holds the truth), built exactly as ``blindlens sample`` builds it with its defaults (prior ``auto``, the Sérsic
pre-fit placing the source grid, the sampled grid placement, ``--supersampling``):

1. ``--trajectories`` independent :func:`~blindlens.gibbsddrm.sample_gibbsddrm` trajectories (one
   joint draw each, the paper's scheme), once from the lens pre-fit's best lenses (``warm``, what
   the Gibbs chains' warm start uses) and once from prior draws of the lens (``cold``, the paper's
   use); PiGDM guidance, ``--steps`` reverse intervals.
2. From each warm trajectory's end, ``--tail`` exact Gibbs sweeps (one split-Gibbs source move and
   one HMC lens transition each, the default sweep; the first half adapts the lens step), all
   trajectories vectorised as independent chains: what it takes to turn the trajectories' draws
   into posterior draws.

Each set of draws is compared with the default Gibbs run of the same system (``--reference``: the
study's JSONL line, 2 x 300 draws): per lens parameter the draws' spread over the Gibbs posterior sd
(``width``), the ensemble's own calibration ``z = (mean - truth) / sd`` over draws, and the residual
chi^2/N of every draw against the true lens and source's own. Prints one JSON line per set; appends
them to ``--out``.

Usage::

    JAX_PLATFORMS=cpu python scripts/continuous_time_study.py /tmp/blindlens_cold_start/NAME/system_010 \\
        --reference docs/calibration/cold_start_broad_dec05_shift.jsonl --system 10 \\
        --out docs/calibration/continuous_time_lenstronomy.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.random as jr
import numpy as np

from blindlens.inference.chain_starts import prefit_starts
from blindlens.inference.gibbs_core import GibbsCore
from blindlens.inference.gibbsddrm import sample_gibbsddrm
from blindlens.inference.lens_space import LensSpace
from blindlens.inference.numpyro_model import lens_from_values, nuisance_site_names
from blindlens.inference.parametric_prefit import SersicPrefitConfig
from blindlens.io.observation import load_observation
from blindlens.pipeline import build_kernel, load_lens_model, run_lens_model
from blindlens.sample_options import SampleOptions, split_gibbs_config
from blindlens.source_setup import (
    load_source_prior,
    resolve_prior_spec,
    source_grid_center,
)


def build(system: Path, options: SampleOptions, prefit_config=None):
    """``(kernel, prefit)`` as ``blindlens sample obs.fits`` builds them with ``options``."""
    # the truth comes from the reference line (the study recorded it), so obs.fits is all this reads
    obs = load_observation(str(system / "obs.fits"))
    prior = load_source_prior(resolve_prior_spec(options.prior, obs))
    lens_model = run_lens_model(load_lens_model(options.lens_model), options, obs, prior)
    center, prefit = source_grid_center(options, lens_model, obs, prefit_config=prefit_config, verbose=True)
    return build_kernel(lens_model, obs, prior, options, center=center, prefit=prefit), prefit


def summarise(label, lens, chi2, truth, reference, num_pixels, seconds, passes, true_chi2):
    """One JSON-able line for a set of joint draws (``lens``: site -> ``(n,)``)."""
    params = {}
    for name, ref in reference.items():
        draws = np.asarray(lens[name], float)
        sd = float(draws.std(ddof=1))
        lo68, hi68, lo95, hi95 = np.quantile(draws, [0.16, 0.84, 0.025, 0.975])
        params[name] = {
            "mean": float(draws.mean()), "sd": sd, "width": sd / ref["sd"],
            "z_own": (float(draws.mean()) - truth[name]) / sd if sd > 0 else float("nan"),
            "z_gibbs_sd": (float(draws.mean()) - truth[name]) / ref["sd"],
            "in68": bool(lo68 <= truth[name] <= hi68), "in95": bool(lo95 <= truth[name] <= hi95),
        }
    per_pixel = np.asarray(chi2, float) / num_pixels
    return {"set": label, "draws": int(per_pixel.size), "chi2": np.round(per_pixel, 4).tolist(),
            "chi2_median_minus_truth": float(np.median(per_pixel) - true_chi2),
            "width_median": float(np.median([p["width"] for p in params.values()])),
            "seconds": round(seconds, 1), "network_passes_per_draw": passes, "params": params}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("system", type=Path, help="folder with the study's obs.fits")
    p.add_argument("--reference", type=Path, required=True, help="cold-start study JSONL (the Gibbs posterior)")
    p.add_argument("--system-index", "--system", dest="index", type=int, required=True)
    p.add_argument("--trajectories", type=int, default=16)
    p.add_argument("--steps", type=int, default=200, help="reverse intervals per trajectory")
    p.add_argument("--tail", type=int, nargs="*", default=[10, 25, 50, 100],
                   help="Gibbs sweeps after the warm trajectories at which to measure (max = sweeps run)")
    p.add_argument("--supersampling", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefit-starts", type=int, default=None, help="Sérsic pre-fit starts (default: the CLI's)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    ref_line = next(json.loads(s) for s in args.reference.read_text().splitlines() if json.loads(s)["system"] == args.index)
    nuisance = set(ref_line.get("nuisance_params") or [])
    reference = {n: v for n, v in ref_line["params"].items() if n in ref_line["lens_params"] and n not in nuisance}
    options = SampleOptions(supersampling=args.supersampling, warm_start_steps=args.steps, seed=args.seed)
    prefit_config = None if args.prefit_starts is None else SersicPrefitConfig(num_starts=args.prefit_starts)
    kernel, prefit = build(args.system, options, prefit_config)
    jm, prior = kernel.joint_model, kernel.prior
    truth = {n: float(ref_line["lens_truth"][n]) for n in reference}
    num_pixels = int(np.sum(np.asarray(jm.mask)))
    true_chi2 = float(ref_line["true_chi2"])
    config = kernel.warm_start
    passes = config.num_score_evals + config.num_steps  # prior passes + one PiGDM VJP per interval

    def chi2_of(values, source):
        return jm.residual_chi2(lens_from_values(jm.lens_model, values), source)

    def emit(line):
        line.update(system=args.index, steps=args.steps, supersampling=args.supersampling,
                    gibbs_chi2_dominant=ref_line.get("chi2_dominant"), true_chi2=true_chi2)
        print(json.dumps({k: v for k, v in line.items() if k not in ("params", "chi2")}), flush=True)
        print("   " + "  ".join(f"{n} width {v['width']:.2f} z_own {v['z_own']:+.2f}" for n, v in line["params"].items()),
              flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")

    n = args.trajectories
    key = jr.key(args.seed + 19)
    k_warm, k_cold, k_start, k_tail = jr.split(key, 4)
    starts, note = prefit_starts(kernel, k_start, n, prefit)
    print(note, flush=True)
    run_from = jax.jit(lambda keys, init: jax.lax.map(lambda a: sample_gibbsddrm(a[0], jm, prior, config, a[1]),
                                                      (keys, init)))
    run_cold = jax.jit(lambda keys: jax.lax.map(lambda k: sample_gibbsddrm(k, jm, prior, config), keys))
    chi2_all = jax.jit(jax.vmap(chi2_of))
    results = {}
    for label in ("warm", "cold"):
        t0 = time.time()
        draws = run_from(jr.split(k_warm, n), starts) if label == "warm" else run_cold(jr.split(k_cold, n))
        fit = np.asarray(chi2_all(draws.lens, draws.source))
        seconds = (time.time() - t0) / n
        results[label] = draws
        emit(summarise(f"continuous-time, {label} start", draws.lens, fit, truth, reference, num_pixels, seconds,
                       passes, true_chi2))

    # the exact tail: vectorised Gibbs sweeps from the warm trajectories' ends
    tail = sorted(set(args.tail))
    if tail:
        total = tail[-1]
        core = GibbsCore.default(jm.lens_model, prior, jm, split_gibbs=split_gibbs_config(options),
                                 num_warmup=max(total // 2, 1))
        warm = results["warm"]
        states = jax.vmap(lambda k, v, s: core.init(k, jm, v, s))(jr.split(k_tail, n), warm.lens, warm.source)
        adapt = jax.jit(jax.vmap(lambda k, st: core.sweep(k, st, jm, warmup=True, descend=False)))
        keep = jax.jit(jax.vmap(lambda k, st: core.sweep(k, st, jm, warmup=False, descend=False)))
        space = LensSpace(jm.lens_model)
        t0, done = time.time(), 0
        for k in tail:
            for _ in range(k - done):
                k_tail, sub = jr.split(k_tail)
                step = adapt if done < core.num_warmup else keep
                states, info = step(jr.split(sub, n), states)
                done += 1
            values = jax.vmap(space.constrain)(states.lens)
            fit = np.asarray(info.chi2)
            seconds = (time.time() - t0) / n
            emit(summarise(f"warm trajectory + {k} Gibbs sweeps", values, fit, truth, reference, num_pixels,
                           seconds, passes + float(np.mean(np.asarray(states.num_score_evals))), true_chi2)
                 | {"tail_sweeps": k})
    skipped = sorted(nuisance_site_names(jm.lens_model))
    if skipped:
        print(f"(not compared: the grid placement {', '.join(skipped)}, a nuisance)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
