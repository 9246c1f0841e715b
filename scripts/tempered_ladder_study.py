"""How dense must a temperature ladder be on a real lens? Swap rates of the replica-exchange source sampler.

:func:`blindlens.tempered_split_gibbs.sample_source_posterior_tempered` swaps neighbouring rungs with
probability ``min(1, exp((beta_k - beta_{k+1}) (l_{k+1} - l_k)))``; the rates say how many rungs a
ladder needs per e-fold of ``beta``, hence its cost on a given problem. For the observation's true
lens (its ``[[light]]`` subtracted) and the truth's source grid, every rung started at the true
source, the script runs ``--steps`` steps per ladder and prints the swap rate per pair, the
``beta = 1`` rung's chi^2/N, the network passes per step (all rungs) and the seconds.

Default: the bundled HST-like example (``blindlens example``) with the shipped ``highres`` prior.

Usage::

    JAX_PLATFORMS=cpu python scripts/tempered_ladder_study.py --ladders 4:0.94 4:0.8 4:0.6 4:0.3 --burn-in 100 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from blindlens.io.lens_config import lens_from_config
from blindlens.io.observation import load_observation
from blindlens.io.simulation import example_survey_paths
from blindlens.physics.light_profiles import LensLightImager, light_of, mass_of
from blindlens.pipeline import load_source_prior
from blindlens.source.source_posterior import fixed_lens_operator
from blindlens.source.split_gibbs import SplitGibbsConfig
from blindlens.source.tempered_split_gibbs import geometric_ladder, sample_source_posterior_tempered


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prior", default="highres", help="shipped name or .eqx file")
    p.add_argument("--ladders", nargs="+", default=["4:0.85", "4:0.5"], metavar="K:BETA_MIN",
                   help="geometric ladders of K rungs from 1 down to BETA_MIN")
    p.add_argument("--steps", type=int, default=20, help="kept steps per ladder (swap rates counted over them)")
    p.add_argument("--burn-in", type=int, default=0, help="steps discarded first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--observation", default=None, help="observation file (default: the bundled HST-like example)")
    p.add_argument("--truth", default=None, help="its truth file; the source must lie on the prior's grid")
    p.add_argument("--out", default=None, help="JSON lines file to append rows to")
    args = p.parse_args(argv)

    paths = example_survey_paths()
    if args.observation is None:
        obs = load_observation(str(paths["observation"]), psf=str(paths["psf"]))
        truth = np.load(paths["truth"])
    else:
        obs, truth = load_observation(args.observation), np.load(args.truth)
    lens = lens_from_config(tomllib.loads(str(truth["lens_toml"])))
    data = obs.image
    if light_of(lens) is not None:
        data = data - LensLightImager(obs.image_grid, obs.psf_operator(), int(truth["supersampling"]))(light_of(lens))
    prior = load_source_prior(args.prior)
    center = tuple(truth["source_center"]) if "source_center" in truth else (0.0, 0.0)
    op = fixed_lens_operator(obs, mass_of(lens), prior, source_center=center, supersampling=int(truth["supersampling"]))
    observed = np.ones(obs.image.shape, bool) if obs.mask is None else np.asarray(obs.mask, bool)
    n = int(observed.sum())
    src = jnp.asarray(truth["source"], jnp.float32)[None]

    def chi2(s):
        r = (data - op(s)) / obs.noise
        return float(jnp.sum(jnp.where(observed, r, 0.0) ** 2) / n)

    print(f"prior {args.prior}: truth chi^2/N {chi2(src[0]):.4f} (N = {n})", flush=True)
    for spec in args.ladders:
        k, beta_min = spec.split(":")
        betas = geometric_ladder(int(k), float(beta_min))
        t0 = time.time()
        res = sample_source_posterior_tempered(jr.key(args.seed), prior, op, data, obs.noise, src, betas,
                                               num_samples=args.steps, burn_in=args.burn_in, config=SplitGibbsConfig())
        res.samples.block_until_ready()
        seconds = time.time() - t0
        rate = np.asarray(res.swap_rate[0])
        last = chi2(res.samples[0, -1])
        row = {"observation": args.observation or "bundled HST example", "prior": str(args.prior),
               "betas": [round(float(b), 6) for b in betas], "steps": args.steps, "burn_in": args.burn_in, "swap_rate": rate.round(4).tolist(),
               "chi2_per_n_last": last, "passes_per_step": float(res.passes[0]) / (args.steps + args.burn_in),
               "seconds_incl_compile": seconds}
        print(f"  ladder {spec}: betas {np.round(np.asarray(betas), 4).tolist()}, swap rates {rate.round(3).tolist()}, "
              f"beta=1 chi^2/N after {args.steps} steps {last:.4f}, passes/step {row['passes_per_step']:.0f}, "
              f"{seconds:.0f} s (with compile)", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
