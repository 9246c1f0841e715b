"""How well the shipped prior's network denoises on a source grid wider than its training stamps.

The score network is fully convolutional, so ``ScorePrior.with_grid_size`` (``blindlens sample
--source-size``) runs it on a wider field at the same pixel scale. This script pads held-out
galaxies (the ``broad`` population, seed 12: never trained on) into a wider grid, adds Gaussian
noise, and compares the denoiser's squared error on the galaxy's own 64 x 64 region (and on the
empty border) with the error the stamp-sized grid gives on the same galaxies and noise, at the noise
levels a posterior draw passes through. Prints a Markdown table (docs/prior.md).

Command (1-2 min on a CPU)::

    JAX_PLATFORMS=cpu .venv/bin/python scripts/wide_grid_denoising.py --prior highres --size 96 128
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from blindlens.prior.galaxies import BroadGalaxyRecipe, draw_procedural_galaxies
from blindlens.prior.score_prior import ScorePrior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default="highres", help="shipped prior name (its stamp must be 64 x 64 at 0.05\")")
    parser.add_argument("--size", type=int, nargs="+", default=[96, 128], help="wider grid sides [pixels]")
    parser.add_argument("--galaxies", type=int, default=48)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.005, 0.02, 0.08, 0.3, 1.0],
                        help="noise sd in network units (the galaxies' pixel sd is about 0.07)")
    parser.add_argument("--shift", type=int, default=16, help="offset [pixels] of the off-centre placement")
    args = parser.parse_args()

    prior = ScorePrior.shipped(args.prior)
    n = prior.shape[0]
    galaxies = jnp.asarray(draw_procedural_galaxies(args.galaxies, seed=12, recipe=BroadGalaxyRecipe()))
    if galaxies.shape[1] != n:
        raise SystemExit(f"the broad population's stamps are {galaxies.shape[1]} pixels, the prior's {n}: use a 64-pixel prior")
    rng = np.random.default_rng(0)
    print(f"prior {args.prior} ({n} x {n} at {prior.pixel_scale}\"), {args.galaxies} held-out broad galaxies (seed 12)")
    print()
    print("| grid | placement | " + " | ".join(f"sigma {s:g}" for s in args.sigmas) + " |")
    print("|---|---|" + "---|" * len(args.sigmas))
    rows = {}
    for size in args.size:
        wide = prior.with_grid_size(size)
        denoise_wide = jax.jit(jax.vmap(wide.network.denoise, in_axes=(0, None)))
        denoise_own = jax.jit(jax.vmap(prior.network.denoise, in_axes=(0, None)))
        for shift in (0, args.shift):
            cells, border_cells = [], []
            for sigma in args.sigmas:
                noise = jnp.asarray(rng.normal(size=(args.galaxies, size, size)) * sigma, jnp.float32)
                lo = (size - n) // 2
                own = denoise_own(galaxies + noise[:, lo:lo + n, lo:lo + n], sigma)
                err_own = float(jnp.sum((own - galaxies) ** 2))
                big = jnp.zeros((args.galaxies, size, size)).at[:, lo + shift:lo + shift + n, lo:lo + n].set(galaxies)
                out = denoise_wide(big + noise, sigma)
                inner = float(jnp.sum((out - big)[:, lo + shift:lo + shift + n, lo:lo + n] ** 2))
                border = float(jnp.sum((out - big) ** 2)) - inner
                cells.append(f"{inner / err_own:.2f}")
                border_cells.append(f"{border / err_own:.2f}")
            rows[(size, shift)] = cells
            where = "centred" if shift == 0 else f"{shift} px off centre"
            print(f"| {size} | {where}: galaxy region / stamp's error | " + " | ".join(cells) + " |")
            print(f"| {size} | {where}: empty border / stamp's error | " + " | ".join(border_cells) + " |")


if __name__ == "__main__":
    main()
