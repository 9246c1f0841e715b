"""How far is a supersampled model image from the continuum? (issue 14, the ``--supersampling`` default)

For each lenstronomy system of ``--systems`` (``lenstronomy_systems.py``), the true lens and source
are imaged by blindlens's :class:`~blindlens.lensing_operator.LensingOperator` at supersampling
``k`` and at ``--reference`` (a near-continuum, 12 by default); the model error of ``k`` is
``chi^2 = sum(((image_k - image_ref) / sigma_n)^2)`` over the 96 x 96 image: the misfit a fit at
``k`` must absorb by moving the lens (at most ``sqrt(chi^2)`` posterior sd along one direction).
The simulations' own images (lenstronomy, supersampling 3) are compared the same way. Prints a
markdown table.

    JAX_PLATFORMS=cpu .venv/bin/python scripts/supersampling_error.py --systems 10:17
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse

import jax.numpy as jnp
import numpy as np
from lenstronomy_systems import (
    IMAGE_N,
    PIXEL_SCALE,
    SOURCE_SCALE,
    blindlens_lens,
    simulate_system,
)

from blindlens.physics.grid import PixelGrid
from blindlens.physics.lensing_operator import LensingOperator


def model_errors(i: int, population: str, factors, reference: int) -> dict:
    """chi^2 of each supersampling factor's image (and the simulation's) against ``reference``."""
    s = simulate_system(i, population, 0)
    src = jnp.asarray(s["source"], jnp.float32)
    image_grid = PixelGrid((IMAGE_N, IMAGE_N), PIXEL_SCALE)
    source_grid = PixelGrid(src.shape, SOURCE_SCALE, tuple(s["source_center"]))
    lens = blindlens_lens(s["lens"])

    def image(k):
        op = LensingOperator(lens, image_grid, source_grid, psf=np.asarray(s["psf"]), supersampling=k)
        return np.asarray(op(src), np.float64)

    ref = image(reference)
    chi2 = {k: float(np.sum(((image(k) - ref) / s["noise_sigma"]) ** 2)) for k in factors}
    chi2["simulation"] = float(np.sum(((s["noiseless"] - ref) / s["noise_sigma"]) ** 2))
    return {"system": i, "peak_snr": float(s["peak_snr"]), "theta_E": float(s["lens"]["theta_E"]), "chi2": chi2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default="10:17", help="range a:b")
    p.add_argument("--population", default="broad")
    p.add_argument("--factors", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--reference", type=int, default=12)
    args = p.parse_args(argv)
    a, b = (int(v) for v in args.systems.split(":"))
    head = " | ".join(f"supersampling {k}" for k in args.factors)
    print(f"| system | peak SNR | theta_E | {head} | lenstronomy simulation (supersampling 3) |")
    print("|---" * (len(args.factors) + 4) + "|")
    for i in range(a, b):
        r = model_errors(i, args.population, args.factors, args.reference)
        cells = " | ".join(f"{r['chi2'][k]:.1f}" for k in args.factors)
        print(f"| {i} | {r['peak_snr']:.0f} | {r['theta_E']:.3f} | {cells} | {r['chi2']['simulation']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
