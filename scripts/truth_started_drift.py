"""Is a lens error the chains' or the posterior's? Chains started at the true lens and source.

A cold-start run that ends several posterior sds from the true lens either got stuck there (a
mixing or start problem: chains started at the truth would stay near it) or found the posterior
of the model it samples (then chains started at the truth drift to the same place). For a
lenstronomy system of the cold-start study (its folder: ``obs.fits``, ``truth.npz`` and the run's
``.nc``), this starts ``--chains`` chains at the true lens (grid placement 0) and the true source,
on the prior's grid centred on the true source, with the command line's model and the default
sweep (split Gibbs + HMC), runs ``--warmup`` + ``--sweeps`` sweeps, and prints per lens parameter
the truth, the cold run's pooled mean, and the truth-started chains' mean over three windows
(warm-up, first and second half of the kept sweeps), in units of the cold run's pooled sd.

``--t-final`` sets the split-Gibbs move's noise floor ``sigma(t_final)`` (the floored prior
``p * N(0, sigma_f^2 I)`` the sweeps sample under; default that of ``SplitGibbsConfig``): a
higher floor is a weaker source prior.

Usage::

    JAX_PLATFORMS=cpu python scripts/truth_started_drift.py WORK/system_044 --warmup 40 --sweeps 300 \\
        [--t-final 0.2] [--out rows.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import arviz as az
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sweep_schedule import setup  # noqa: E402  (the benchmark's model and truth start)

from blindlens.inference.gibbs_core import GibbsCore  # noqa: E402
from blindlens.inference.numpyro_model import nuisance_site_names  # noqa: E402
from blindlens.source.split_gibbs import SplitGibbsConfig, floor_sigma  # noqa: E402
from blindlens.source_setup import load_source_prior  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("system", type=Path, help="folder with obs.fits, truth.npz and the cold-start run's .nc")
    p.add_argument("--prior", default="highres")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--sweeps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--t-final", type=float, default=None, help="split-Gibbs noise floor time (default: the config's)")
    p.add_argument("--out", type=Path, default=None, help="JSON lines file to append the row to")
    args = p.parse_args(argv)

    prior = load_source_prior(args.prior)
    config = SplitGibbsConfig() if args.t_final is None else SplitGibbsConfig(t_final=args.t_final)
    model, sites, starts, sources = setup(args.system, prior, args.chains, from_truth=True)
    core = GibbsCore.default(model.lens_model, prior, model, split_gibbs=config, num_warmup=args.warmup)
    keys = jr.split(jr.key(args.seed), args.chains)
    states = [core.init(k, model, v, s) for k, v, s in zip(keys, starts, sources, strict=True)]
    state = jax.tree.map(lambda *x: jnp.stack(x), *states)

    def make(warmup):
        def step(k, s):
            return jax.vmap(lambda kk, ss: core.sweep(kk, ss, model, warmup=warmup, descend=False)[0])(
                jr.split(k, args.chains), s)
        return jax.jit(step)

    warm, sample = make(True), make(False)
    t0 = time.time()
    lens = []
    for i in range(args.warmup):
        state = warm(jr.fold_in(jr.key(args.seed + 1), i), state)
        lens.append(state.lens)
    for i in range(args.sweeps):
        state = sample(jr.fold_in(jr.key(args.seed + 2), i), state)
        lens.append(state.lens)
    values = jax.vmap(jax.vmap(core.lens_values))(jnp.stack(lens, 1))
    seconds = time.time() - t0
    judged = [s for s in sites if s not in nuisance_site_names(model.lens_model)]
    truth = {k: float(v) for k, v in starts[0].items()}
    cold = az.from_netcdf(min(args.system.glob("*.nc"))).posterior
    n = args.warmup + args.sweeps
    half = args.warmup + args.sweeps // 2
    windows = [(0, args.warmup), (args.warmup, half), (half, n)]
    floor = floor_sigma(prior, config)
    print(f"{args.system.name}, split-Gibbs floor sigma_f {floor:.4f}: {args.chains} chains from the truth, "
          f"{args.warmup} + {args.sweeps} sweeps in {seconds:.0f} s; z in units of the cold run's pooled sd")
    print("| parameter | truth | cold run: mean (z) | " + " | ".join(f"truth-started, sweeps {a}-{b}: z (per chain)"
                                                        for a, b in windows) + " |")
    print("|---|---|---|" + "---|" * len(windows))
    row = {"system": args.system.name, "floor_sigma": floor, "t_final": config.t_final, "chains": args.chains,
           "warmup": args.warmup, "sweeps": args.sweeps, "seconds": seconds, "params": {}}
    for s in judged:
        v = np.asarray(values[s], np.float64)
        c = np.asarray(cold[s].values, np.float64)
        sd, t = float(c.std()), truth[s]
        zs = [[(float(v[k, a:b].mean()) - t) / sd for k in range(args.chains)] for a, b in windows]
        cells = " | ".join(f"{np.mean(z):+.2f} ({' '.join(f'{x:+.1f}' for x in z)})" for z in zs)
        print(f"| {s} | {t:+.4f} | {c.mean():+.4f} ({(c.mean() - t) / sd:+.2f}) | {cells} |", flush=True)
        row["params"][s] = {"truth": t, "cold_mean": float(c.mean()), "cold_sd": sd, "window_z": zs,
                            "kept_sd": float(v[:, args.warmup:].std())}
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
