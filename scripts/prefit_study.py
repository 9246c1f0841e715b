"""Does the Sérsic + shapelet pre-fit find the lens's basin? (issue 14, mode finding)

For each lenstronomy system of ``--systems`` (``lenstronomy_systems.py``: held-out galaxies at
0.05"/pixel, SIE + shear, 96 x 96, PSF FWHM 0.1", supersampling 3, never blindlens's own
operator), run :func:`blindlens.parametric_prefit.prefit_lens_with_sersic` from prior draws of
the CLI's default lens prior (``sie_shear``) and record: the best run's lens against the truth,
how many runs reached the best basin, chi^2/N of the best and of the best run outside the true
basin, and the wall time. The *true basin* is ``|theta_E - truth| < 0.05 theta_E`` and
``|e - e_true| < 0.1`` per component: the same place a Gibbs chain started there converges to.
One JSON line per system goes to ``docs/calibration/<name>.jsonl`` (resumable); ``--report``
writes ``docs/calibration/<name>_tables.md``.

    JAX_PLATFORMS=cpu .venv/bin/python scripts/prefit_study.py --systems 0:10 --population broad
    .venv/bin/python scripts/prefit_study.py --report --name prefit_broad
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lenstronomy_systems import LENS_NAMES, POPULATIONS, simulate_system  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "docs" / "calibration"


def in_true_basin(lens: dict, truth: dict) -> bool:
    return bool(abs(lens["theta_E"] - truth["theta_E"]) < 0.05 * truth["theta_E"]
                and abs(lens["e1"] - truth["e1"]) < 0.1 and abs(lens["e2"] - truth["e2"]) < 0.1)


def run_system(i: int, population: str, seed: int, starts: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from blindlens.numpyro_model import sie_shear
    from blindlens.observation import Observation
    from blindlens.parametric_prefit import SersicPrefitConfig, prefit_lens_with_sersic

    s = simulate_system(i, population, seed)
    obs = Observation(s["image"], np.full_like(s["image"], s["noise_sigma"]), s["psf"], 0.05)
    t0 = time.time()
    found = prefit_lens_with_sersic(jr.key(i), sie_shear, obs,
                                    SersicPrefitConfig(num_starts=starts, num_steps=steps, refine_steps=steps))
    jax.block_until_ready(found.chi2)
    wall = time.time() - t0
    n = found.num_pixels
    runs = [{k: float(v[j]) for k, v in found.runs.items()} for j in range(starts)]
    basin = [in_true_basin(r, s["lens"]) for r in runs]
    chi2 = np.asarray(found.chi2, float) / n
    wrong = [c for c, b in zip(chi2, basin) if not b]
    return {
        "system": i, "population": population, "seed": seed, "truth": s["lens"], "peak_snr": float(s["peak_snr"]),
        "best": runs[0], "best_in_true_basin": basin[0], "runs_in_true_basin": int(sum(basin)),
        "num_starts": starts, "num_steps": steps, "best_chi2_per_n": float(chi2[0]),
        "best_wrong_chi2_per_n": float(min(wrong)) if wrong else None,
        "true_chi2_per_n": float(s["true_chi2_per_n"]), "num_refined": int(found.num_refined),
        "error": {k: runs[0][k] - s["lens"][k] for k in LENS_NAMES}, "wall_seconds": wall,
        "jax": jax.__version__, "backend": jnp.zeros(1).devices().pop().platform,
    }


def report(lines: list[dict], name: str) -> str:
    out = [f"# Lens pre-fit study `{name}` (scripts/prefit_study.py)", "",
           "| system | SNR | theta_E true | best theta_E | best e1, e2 (true) | in true basin | runs in basin | "
           "chi^2/N best | best wrong-basin chi^2/N | wall [s] |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(lines, key=lambda r: r["system"]):
        t, b = r["truth"], r["best"]
        wrong = "-" if r["best_wrong_chi2_per_n"] is None else f"{r['best_wrong_chi2_per_n']:.2f}"
        out.append(
            f"| {r['system']} | {r['peak_snr']:.0f} | {t['theta_E']:.3f} | {b['theta_E']:.3f} | "
            f"{b['e1']:+.3f}, {b['e2']:+.3f} ({t['e1']:+.3f}, {t['e2']:+.3f}) | {'yes' if r['best_in_true_basin'] else 'NO'} | "
            f"{r['runs_in_true_basin']}/{r['num_starts']} | {r['best_chi2_per_n']:.2f} | {wrong} | {r['wall_seconds']:.0f} |")
    hits = sum(r["best_in_true_basin"] for r in lines)
    out += ["", f"Best run in the true basin for {hits} of {len(lines)} systems.", ""]
    errs = {k: np.array([r["error"][k] for r in lines]) for k in LENS_NAMES}
    out.append("Best-run error over systems (mean +- sd): " + ", ".join(
        f"{k} {errs[k].mean():+.4f} +- {errs[k].std(ddof=1) if len(lines) > 1 else 0:.4f}" for k in LENS_NAMES))
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default="0:10", help="range a:b or list i,j,k")
    p.add_argument("--population", choices=POPULATIONS, default="broad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--starts", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--name", default=None)
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    name = args.name or f"prefit_{args.population}"
    path = CALIBRATION / f"{name}.jsonl"
    if args.report:
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        (CALIBRATION / f"{name}_tables.md").write_text(report(lines, name))
        print(report(lines, name))
        return
    if ":" in args.systems:
        a, b = (int(v) for v in args.systems.split(":"))
        systems = list(range(a, b))
    else:
        systems = [int(v) for v in args.systems.split(",")]
    done = set()
    if path.exists():
        done = {json.loads(x)["system"] for x in path.read_text().splitlines() if x.strip()}
    for i in systems:
        if i in done:
            continue
        line = run_system(i, args.population, args.seed, args.starts, args.steps)
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"system {i}: best in true basin {line['best_in_true_basin']}, {line['runs_in_true_basin']}/"
              f"{args.starts} runs, chi2/N {line['best_chi2_per_n']:.2f}, {line['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
