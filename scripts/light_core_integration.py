"""How well does blindlens image a bright deflector's Sérsic core? (issue 17)

For the deflector light of the lens-light study systems (``lenstronomy_systems.py --lens-light``:
lenstronomy ``SERSIC_ELLIPSE``, n 2-4, R_sersic 0.3-0.8", peak 5-20x the arcs'), compare
:class:`~blindlens.light_profiles.LensLightImager` images with the converged pixel integral
(16 x 16 sub-pixels everywhere and 160 x 160 in the 7 x 7 pixels around the centre, PSF-convolved),
in units of the system's noise:

    chi^2 = sum ((image - converged) / sigma)^2   over the 96 x 96 pixels.

Rows: the plain mean over 2 x 2 (the CLI's ``--supersampling``) and 3 x 3 sub-pixels, and the
default imager (2 x 2 with its refined core box) with several box sizes and core sub-samplings.

    PYTHONPATH=src:scripts python scripts/light_core_integration.py --systems 1:11 \\
        --out docs/calibration/light_core_integration.md
"""

from __future__ import annotations

import argparse

import jax
import lenstronomy_systems as ls
import numpy as np

from blindlens.physics.grid import PixelGrid
from blindlens.physics.light_profiles import CORE_SIZE, CORE_SUPERSAMPLING, LensLightImager, light_of
from blindlens.physics.psf import PSF

VARIANTS = (("2x2, plain", 2, None, CORE_SIZE), ("3x3, plain", 3, None, CORE_SIZE),
            ("2x2 + core 5x5 px at 24x24", 2, 24, 5), ("2x2 + core 7x7 px at 12x12", 2, 12, 7),
            (f"2x2 + core {CORE_SIZE}x{CORE_SIZE} px at {CORE_SUPERSAMPLING}x{CORE_SUPERSAMPLING} (default)", 2,
             CORE_SUPERSAMPLING, CORE_SIZE))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default="1:11")
    p.add_argument("--out")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    a, b = (int(v) for v in args.systems.split(":"))
    grid = PixelGrid((ls.IMAGE_N, ls.IMAGE_N), ls.PIXEL_SCALE)
    rows = []
    for i in range(a, b):
        s = ls.simulate_system(i, "broad", lens_light=True)
        light = light_of(ls.blindlens_lens(s["lens"], s["lens_light"]))
        psf = PSF(np.asarray(s["psf"]), grid.shape)
        converged = np.asarray(LensLightImager(grid, psf, 16, core_supersampling=160, core_size=7)(light))
        chi2 = [float(np.sum(((np.asarray(LensLightImager(grid, psf, k, core_supersampling=kc, core_size=m)(light))
                                - converged) / s["noise_sigma"]) ** 2)) for _, k, kc, m in VARIANTS]
        rows.append((i, s["lens_light"]["n_sersic"], s["lens_light"]["R_sersic"], converged.max() / s["noise_sigma"],
                     chi2))
        print(f"system {i}: " + ", ".join(f"{v[0]} {c:.2f}" for v, c in zip(VARIANTS, chi2)), flush=True)
    lines = ["# Imaging a bright deflector's Sérsic core (issue 17)", "",
             f"`PYTHONPATH=src:scripts python scripts/light_core_integration.py --systems {args.systems}`: chi^2 of "
             "blindlens's light image against the converged pixel integral, in units of each system's noise (see "
             "the script's docstring).", "",
             "| system | n_sersic | R_sersic | peak / sigma | " + " | ".join(v[0] for v in VARIANTS) + " |",
             "|---|---|---|---|" + "---|" * len(VARIANTS)]
    for i, n, r, peak, chi2 in rows:
        lines.append(f"| {i} | {n:.2f} | {r:.2f} | {peak:.0f} | " + " | ".join(f"{c:.2f}" for c in chi2) + " |")
    med = np.median(np.array([r[4] for r in rows]), axis=0)
    lines.append("| median | | | | " + " | ".join(f"{c:.2f}" for c in med) + " |")
    if args.out:
        ls.write_markdown(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
