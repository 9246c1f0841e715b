"""Lens-move benchmark: BlindLensGibbs with curvature-metric NUTS (the default) vs fixed-length HMC.

Same system, same source step, same keys, run back to back in one process: a calibration-study
system (``scripts/calibration_study.py``: 72x72 at 0.05", SIE + shear drawn from the study priors,
held-out galaxy binned to the shipped prior's 32x32 grid, PSF FWHM 0.1", peak SNR 20), the shipped
prior, PiGDM guidance, partial refresh from sigma_r = 0.1 (10 of 25 steps per sweep), NUTS tree
depth <= 5, one chain started at the true lens and source. Reported per lens move: seconds,
leapfrog steps per transition, the final step size, and per parameter the chain sd, the sd of the
sweep-to-sweep move and the bulk ESS; then the ratio of ESS per second. Run::

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/lens_block.py --heldout training_data/heldout.npy \\
        --system 0 --warmup 20 --draws 200

Results: ``docs/joint_inference.md`` ("Lens block"; its identity-metric NUTS rows were measured with
NumPyro's own NUTS as the lens block of the NumPyro Gibbs kernel, before 2026-12-06, which this
benchmark can no longer run: the kernel's lens move is now the pure core's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from numpyro.infer import MCMC

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from calibration_study import lens_model, simulate  # noqa: E402

from blindlens.gibbs_kernel import BlindLensGibbs, lens_unconstrained  # noqa: E402
from blindlens.image_sets import bin_images, load_image_set  # noqa: E402
from blindlens.likelihood_score import PiGDM  # noqa: E402
from blindlens.numpyro_model import SIE_SHEAR_SITES  # noqa: E402
from blindlens.score_prior import ScorePrior  # noqa: E402
from blindlens.source_posterior import SourceSamplerConfig  # noqa: E402

BLOCKS = {
    "NUTS (curvature)": lambda depth: {"lens_move": "nuts", "max_tree_depth": depth},
    "HMC, 2 steps (curvature)": lambda depth: {"lens_move": "hmc", "num_leapfrog": 2},
}


def run(name, obs, truth, source, prior, args):
    kernel = BlindLensGibbs(
        lens_model, obs, prior, source_config=SourceSamplerConfig(guidance=PiGDM(), num_steps=25),
        warm_start=None, supersampling=2, source_refresh_sigma=0.1,
        target_accept_prob=0.8, **BLOCKS[name](args.tree_depth),
    )
    init = {**lens_unconstrained(lens_model, {n: jnp.asarray(v) for n, v in truth.items()}),
            "source": jnp.asarray(source)}
    mcmc = MCMC(kernel, num_warmup=args.warmup, num_samples=args.draws, num_chains=1, progress_bar=False)
    t0 = time.perf_counter()
    mcmc.run(jr.key(args.system), init_params=init, extra_fields=("num_steps", "adapt_state.step_size"))
    post = jax.block_until_ready(mcmc.get_samples())  # JAX dispatches asynchronously
    seconds = time.perf_counter() - t0
    extra = mcmc.get_extra_fields()
    rows = {}
    for n in SIE_SHEAR_SITES:
        v = np.asarray(post[n])
        moved = np.any(np.diff(v) != 0)  # a chain that never moves has no effective samples (ArviZ says n)
        rows[n] = (v.std(), np.std(np.diff(v)), float(az.ess(v.reshape(1, -1))) if moved else 0.0)
    return seconds, float(np.mean(extra["num_steps"])), float(np.asarray(extra["adapt_state.step_size"])[-1]), rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout", required=True, help="held-out galaxies (N, 64, 64) at 0.05\"/pixel")
    parser.add_argument("--system", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--tree-depth", type=int, default=5)
    args = parser.parse_args()
    prior = ScorePrior.default()
    heldout = load_image_set(args.heldout)
    b = heldout.shape[1] // prior.shape[0]  # binned to the prior's grid, as in the calibration study
    heldout = bin_images(heldout[: args.system + 1], b)
    truth, source, obs = simulate(args.system, heldout, prior, 20.0)
    results = {name: run(name, obs, truth, source, prior, args) for name in BLOCKS}
    print(f"system {args.system}, {args.warmup} + {args.draws} sweeps, tree depth <= {args.tree_depth}")
    print("| lens move | s | leapfrog / transition | step size | " + " | ".join(f"ESS {n}" for n in SIE_SHEAR_SITES) + " |")
    print("|---" * (4 + len(SIE_SHEAR_SITES)) + "|")
    for name, (sec, steps, eps, rows) in results.items():
        print(f"| {name} | {sec:.0f} | {steps:.1f} | {eps:.3g} | " + " | ".join(f"{rows[n][2]:.1f}" for n in SIE_SHEAR_SITES) + " |")
    print("\nper parameter: chain sd / sd of the move per sweep")
    for n in SIE_SHEAR_SITES:
        print(f"  {n:9s} " + "   ".join(f"{name}: {results[name][3][n][0]:.2e} / {results[name][3][n][1]:.2e}" for name in BLOCKS))
    (a, b_) = (results[name] for name in BLOCKS)
    ratio = [(a[3][n][2] / a[0]) / (b_[3][n][2] / b_[0]) for n in SIE_SHEAR_SITES]
    print(f"\nESS per second, NUTS / HMC: min {min(ratio):.1f}, median {np.median(ratio):.1f}; "
          f"min-ESS per second ratio {min(r[2] for r in a[3].values()) / a[0] / (min(r[2] for r in b_[3].values()) / b_[0]):.1f}")


if __name__ == "__main__":
    main()
