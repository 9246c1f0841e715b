"""Does a source move keep the posterior? Repeated moves for a fixed lens, started at the truth.

A Markov move that leaves ``p(s | theta, y)`` invariant, applied again and again from a draw of
that posterior, keeps the residual chi^2/N statistically where it started. Started from the true
source, an exact move stays at the level of posterior draws (the truth's own chi^2/N, minus about
the number of well-measured source directions over N). A move whose stationary law is not the
posterior drifts away; inside the Gibbs sweep of a joint run that drift is not visible in one
sweep but accumulates over hundreds (the lens then follows the source).

For the observation's true lens (its ``[[light]]`` held fixed and subtracted) and a source grid on
which the truth is given, the script applies ``--sweeps`` moves of each kind from the true source
and prints chi^2/N every ``--every`` sweeps:

* ``refresh``: the guided partial refresh of the default Gibbs sweep (PiGDM, noise level
  ``3 x`` the median noise sd, :func:`blindlens.source_posterior.source_refresh`);
* ``split``: one exact split-Gibbs move (:func:`blindlens.split_gibbs.split_gibbs_move`);
* ``refresh+split``: the refresh followed by one split-Gibbs move.

Default: the bundled HST-like example (``blindlens example``), whose truth lies on the shipped
``highres`` grid centred at (0, 0).

Usage::

    JAX_PLATFORMS=cpu python scripts/source_move_stationarity.py --priors highres FILE --sweeps 100
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from blindlens.io.lens_config import lens_from_config
from blindlens.io.observation import load_observation
from blindlens.io.simulation import example_survey_paths
from blindlens.physics.light_profiles import LensLightImager, light_of, mass_of
from blindlens.pipeline import load_source_prior
from blindlens.source.source_posterior import (
    SourceSamplerConfig,
    fixed_lens_operator,
    source_refresh,
    source_step,
)
from blindlens.source.split_gibbs import SplitGibbsConfig, split_gibbs_move


def _moves(prior, op, data, noise, refresh_sigma, config, sg_config):
    def refresh(k, s):
        return source_refresh(k, prior, op, data, noise, s, refresh_sigma, config)

    def split(k, s):
        return split_gibbs_move(k, prior, op, data, noise, s, sg_config)

    def both(k, s):
        k1, k2 = jr.split(k)
        return split(k2, refresh(k1, s))

    return {"refresh": refresh, "split": split, "refresh+split": both}


def _trace(move, key, start, chi2, sweeps, every):
    @eqx.filter_jit
    def block(key, s):
        def one(s, k):
            return move(k, s), None

        s, _ = jax.lax.scan(one, s, jr.split(key, every))
        return s

    s, out = start, [float(chi2(start))]
    for k in jr.split(key, sweeps // every):
        s = block(k, s)
        out.append(float(chi2(s)))
    return out


def _demo_problem(folder):
    """The demo's observation (as ``blindlens demo`` simulates it) and its truth, written to ``folder``."""
    from pathlib import Path

    from blindlens.io.image_sets import bin_images
    from blindlens.io.lens_config import load_lens_config
    from blindlens.io.observation import save_observation
    from blindlens.io.simulation import (
        example_lens_path,
        example_source_path,
        load_source,
        save_truth,
        simulate_observation,
    )

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lens = load_lens_config(example_lens_path())
    source = bin_images(np.asarray(load_source(example_source_path()), float), 2)
    noise, pixel = float(source.max()) / 20.0, 0.05
    obs, noiseless = simulate_observation(lens, source, 0.1, key=jr.key(1000), image_shape=(72, 72),
                                          pixel_scale=pixel, psf_fwhm=2 * pixel, noise_sigma=noise, supersampling=2)
    save_observation(obs, out / "observation.npz")
    save_truth(out / "observation_truth.npz", lens, source, 0.1, noiseless, pixel, supersampling=2,
               noise_sigma=noise, psf_fwhm=2 * pixel, seed=1000)
    return str(out / "observation.npz"), str(out / "observation_truth.npz")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--priors", nargs="+", default=["highres"], help="shipped names or .eqx files")
    p.add_argument("--moves", nargs="+", default=["refresh", "split", "refresh+split"])
    p.add_argument("--sweeps", type=int, default=100)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", choices=("truth", "draw"), default="truth",
                   help="start at the true source, or at one guided PiGDM draw (how fast a move descends)")
    p.add_argument("--split-moves", type=int, default=1, help="split-Gibbs moves per call")
    p.add_argument("--coupling", type=float, default=0.8, help="split-Gibbs coupling kappa")
    p.add_argument("--out", default=None, help="JSON file for the traces")
    p.add_argument("--observation", default=None, help="observation file (default: the bundled HST-like example)")
    p.add_argument("--demo-problem", default=None, metavar="DIR",
                   help="simulate the demo's problem (bundled source binned to 0.1\", 72x72 at 0.05\", peak SNR "
                        "20) into DIR and use it; for --priors default")
    p.add_argument("--truth", default=None, help="its truth file (with --observation); the source must lie on the "
                   "prior's grid")
    args = p.parse_args(argv)

    paths = example_survey_paths()
    if args.demo_problem:
        args.observation, args.truth = _demo_problem(args.demo_problem)
    if args.observation is None:
        obs = load_observation(str(paths["observation"]), psf=str(paths["psf"]))
        truth = np.load(paths["truth"])
    else:  # e.g. the demo's observation.npz and observation_truth.npz (`blindlens demo`)
        obs = load_observation(args.observation)
        truth = np.load(args.truth)
    lens = lens_from_config(tomllib.loads(str(truth["lens_toml"])))
    data = obs.image
    if light_of(lens) is not None:
        data = data - LensLightImager(obs.image_grid, obs.psf_operator(), int(truth["supersampling"]))(light_of(lens))
    rows = []
    for spec in args.priors:
        prior = load_source_prior(spec)
        op = fixed_lens_operator(obs, mass_of(lens), prior, source_center=tuple(truth["source_center"]) if "source_center" in truth else (0.0, 0.0),
                                 supersampling=int(truth["supersampling"]))
        observed = np.ones(obs.image.shape, bool) if obs.mask is None else np.asarray(obs.mask, bool)
        n = int(observed.sum())

        def chi2(s, op=op, observed=observed, n=n):
            r = (data - op(s)) / obs.noise
            return jnp.sum(jnp.where(observed, r, 0.0) ** 2) / n

        config = SourceSamplerConfig(num_steps=50)
        src = jnp.asarray(truth["source"], jnp.float32)
        if args.start == "draw":
            src = eqx.filter_jit(source_step)(jr.key(args.seed + 1), prior, op, data, obs.noise, config)
        refresh_sigma = 3.0 * float(np.median(np.asarray(obs.noise)[observed]))
        sg_config = SplitGibbsConfig(num_moves=args.split_moves, coupling=args.coupling,
                                     spectrum_bound=max(0.9, (1 + args.coupling) / 2))
        moves = _moves(prior, op, data, obs.noise, refresh_sigma, config, sg_config)
        print(f"prior {spec}: truth chi^2/N {float(chi2(jnp.asarray(truth['source'], jnp.float32))):.4f} (N = {n}); "
              f"start ({args.start}) {float(chi2(src)):.4f}; refresh sigma {refresh_sigma:.3g}; split-Gibbs "
              f"{args.split_moves} move(s) per call, coupling {args.coupling}")
        for name in args.moves:
            t0 = time.time()
            trace = _trace(moves[name], jr.key(args.seed), src, chi2, args.sweeps, args.every)
            rows.append({"prior": str(spec), "move": name, "chi2_per_n": trace, "every": args.every,
                         "start": args.start, "split_moves": args.split_moves, "coupling": args.coupling,
                         "seconds": time.time() - t0})
            print(f"  {name:>14}: " + " ".join(f"{c:.3f}" for c in trace) + f"  ({time.time() - t0:.0f} s)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
