"""Lens pre-fit benchmark: the Sérsic stage's ray sampling, the default against one ray per pixel.

The CLI's pre-fit (:func:`blindlens.parametric_prefit.prefit_lens_with_sersic` with the default
:class:`~blindlens.parametric_prefit.SersicPrefitConfig`: 48 starts, half on the Cauchy loss, 8
refined with order-6 shapelets at 2 x 2 rays per pixel) on lenstronomy systems of the cold-start
study (``scripts/lenstronomy_systems.py``: 96x96 at 0.05", PSF FWHM 0.1", supersampling 3), run
back to back in one process with the same key per system, the order of the two settings
alternating between systems. Reported per system and setting: wall seconds, the best run's
chi^2/N, its theta_E against the truth, whether it is in the true basin
(``prefit_study.in_true_basin``) and how many runs are; then the median ratio of wall times. With
the persistent compilation cache of the CLI (``blindlens.compilation_cache``) and one untimed
call per setting first, so that both sides are timed as a catalogue's second lens is. Run::

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/prefit.py --systems 11,19,20

Results: ``docs/performance.md`` ("Pre-fit").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.random as jr
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from lenstronomy_systems import simulate_system  # noqa: E402
from prefit_study import in_true_basin  # noqa: E402

from blindlens.compilation_cache import enable_compilation_cache  # noqa: E402
from blindlens.inference.parametric_prefit import SersicPrefitConfig, prefit_lens_with_sersic  # noqa: E402
from blindlens.io.observation import Observation  # noqa: E402
from blindlens.numpyro_model import sie_shear  # noqa: E402

SETTINGS = {
    "search at 2x2 rays (default)": SersicPrefitConfig(search_supersampling=2),
    "search at 1 ray": SersicPrefitConfig(search_supersampling=1),
}


def observation(system: int, seed: int):
    s = simulate_system(system, "broad", seed)
    return Observation(s["image"], np.full_like(s["image"], s["noise_sigma"]), s["psf"], 0.05), s


def one(obs, truth, config, key):
    t0 = time.perf_counter()
    found = prefit_lens_with_sersic(key, sie_shear, obs, config)
    jax.block_until_ready(found.chi2)
    wall = time.perf_counter() - t0
    runs = [{k: float(v[j]) for k, v in found.runs.items()} for j in range(found.chi2.shape[0])]
    basin = [in_true_basin(r, truth) for r in runs]
    return {"wall": wall, "chi2": float(found.chi2[0]) / found.num_pixels, "theta_E": runs[0]["theta_E"],
            "basin": basin[0], "in_basin": sum(basin), "runs": len(runs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default="11,19,20", help="list i,j,k of broad systems")
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    args = p.parse_args()
    enable_compilation_cache()
    systems = [int(v) for v in args.systems.split(",")]
    names = list(SETTINGS)
    obs0, s0 = observation(systems[0], args.seed)
    for name in names:  # compile (or load from the cache) outside the timings
        one(obs0, s0["lens"], SETTINGS[name], jr.key(0))
    rows, ratios = [], []
    for k, system in enumerate(systems):
        obs, s = observation(system, args.seed)
        key = jax.random.fold_in(jr.key(0), system)
        order = names if k % 2 == 0 else names[::-1]
        result = {name: one(obs, s["lens"], SETTINGS[name], key) for name in order}
        ratios.append(result[names[0]]["wall"] / result[names[1]]["wall"])
        for name in names:
            r = result[name]
            rows.append(f"| {system} | {name} | {r['wall']:.0f} | {r['chi2']:.2f} | {r['theta_E']:.3f} "
                        f"({s['lens']['theta_E']:.3f}) | {'yes' if r['basin'] else 'NO'} | {r['in_basin']}/{r['runs']} |")
        print(rows[-2] + "\n" + rows[-1], flush=True)
    print("\n| system | Sérsic stage | wall s | best chi^2/N | best theta_E (true) | best in true basin | runs in basin |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nmedian wall-time ratio, 2x2 / 1 ray: {np.median(ratios):.2f} "
          f"(per system: {', '.join(f'{r:.2f}' for r in ratios)}); jax {jax.__version__}, "
          f"{jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
