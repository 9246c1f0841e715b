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

``--lens-light`` simulates the deflector light of ``cold_start_study.py --lens-light`` and runs the
pre-fit exactly as ``blindlens sample obs.fits --lens-light sersic`` does (its lens model with the
light sites and the sampled grid placement, its key, the CLI's pre-fit settings but for
``--tied-fraction``, the share of starts that hold the mass centre on the light's); the line then
also records the best run's mass-to-light centre distance and the mass centre's error.
``--robust-fraction`` sets the share of the starts whose Sérsic stage uses the Cauchy loss
(default: the pre-fit's, 0.5; ``0`` is the chi^2-only pre-fit of 2026-12-06 and before).

    JAX_PLATFORMS=cpu .venv/bin/python scripts/prefit_study.py --lens-light --systems 1:11 --tied-fraction 0 \
        --name prefit_light_free
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


def run_light_system(i: int, population: str, seed: int, tied_fraction: float, robust_fraction: float,
                     search_supersampling: int | None = None) -> dict:
    """The CLI's own pre-fit (``blindlens sample --lens-light sersic``) on a lens-light system."""
    import jax

    from blindlens.inference.parametric_prefit import SersicPrefitConfig
    from blindlens.io.observation import Observation
    from blindlens.pipeline import load_lens_model, run_lens_model
    from blindlens.sample_options import SampleOptions
    from blindlens.source_setup import load_source_prior, resolve_prior_spec, source_grid_center

    s = simulate_system(i, population, seed, lens_light=True)
    obs = Observation(s["image"], np.full_like(s["image"], s["noise_sigma"]), s["psf"], 0.05)
    options = SampleOptions(lens_light="sersic")
    prior = load_source_prior(resolve_prior_spec(options.prior, obs))
    lens_model = run_lens_model(load_lens_model(options.lens_model), options, obs, prior)
    config = SersicPrefitConfig(tied_fraction=tied_fraction, robust_fraction=robust_fraction,
                                search_supersampling=search_supersampling)
    t0 = time.time()
    _, found = source_grid_center(options, lens_model, obs, prefit_config=config)
    jax.block_until_ready(found.chi2)
    wall = time.time() - t0
    n, starts = found.num_pixels, int(found.chi2.shape[0])
    runs = [{k: float(v[j]) for k, v in found.runs.items()} for j in range(starts)]
    basin = [in_true_basin(r, s["lens"]) for r in runs]
    chi2 = np.asarray(found.chi2, float) / n
    wrong = [c for c, b in zip(chi2, basin) if not b]
    best = runs[0]
    light_offset = float(np.hypot(best["center_x"] - best["lens_light_center_x"],
                                  best["center_y"] - best["lens_light_center_y"]))
    centre_error = float(np.hypot(best["center_x"] - s["lens"]["center_x"], best["center_y"] - s["lens"]["center_y"]))
    return {
        "system": i, "population": population, "seed": seed, "lens_light": True, "tied_fraction": tied_fraction,
        "robust_fraction": robust_fraction, "search_supersampling": search_supersampling,
        "truth": s["lens"], "peak_snr": float(s["peak_snr"]),
        "best": {k: best[k] for k in LENS_NAMES}, "best_in_true_basin": basin[0], "runs_in_true_basin": int(sum(basin)),
        "num_starts": starts, "num_steps": config.num_steps, "best_chi2_per_n": float(chi2[0]),
        "best_wrong_chi2_per_n": float(min(wrong)) if wrong else None,
        "true_chi2_per_n": float(s["true_chi2_per_n"]), "num_refined": int(found.num_refined),
        "mass_light_offset": light_offset, "mass_centre_error": centre_error,
        "error": {k: best[k] - s["lens"][k] for k in LENS_NAMES}, "wall_seconds": wall, "jax": jax.__version__,
    }


def run_system(i: int, population: str, seed: int, starts: int, steps: int, robust_fraction: float,
               search_supersampling: int | None = None) -> dict:
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
                                    SersicPrefitConfig(num_starts=starts, num_steps=steps, refine_steps=steps,
                                                       robust_fraction=robust_fraction,
                                                       search_supersampling=search_supersampling))
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
        "num_starts": starts, "num_steps": steps, "robust_fraction": robust_fraction,
        "search_supersampling": search_supersampling,
        "best_chi2_per_n": float(chi2[0]),
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
    p.add_argument("--lens-light", action="store_true", help="deflector light, the CLI's own pre-fit")
    p.add_argument("--tied-fraction", type=float, default=0.5, help="with --lens-light: held starts' share")
    p.add_argument("--robust-fraction", type=float, default=None,
                   help="share of the starts on the Cauchy loss (default: the pre-fit's; 0 = the chi^2 alone)")
    p.add_argument("--search-supersampling", type=int, default=None,
                   help="rays per pixel per axis in the Sérsic stage (default: the pre-fit's)")
    args = p.parse_args()
    from blindlens.inference.parametric_prefit import SersicPrefitConfig

    defaults = SersicPrefitConfig()
    if args.robust_fraction is None:
        args.robust_fraction = defaults.robust_fraction
    if args.search_supersampling is None:
        args.search_supersampling = defaults.search_supersampling
    name = args.name or f"prefit_{args.population}" + ("_light" if args.lens_light else "")
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
        if args.lens_light:
            line = run_light_system(i, args.population, args.seed, args.tied_fraction, args.robust_fraction,
                                    args.search_supersampling)
        else:
            line = run_system(i, args.population, args.seed, args.starts, args.steps, args.robust_fraction,
                              args.search_supersampling)
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"system {i}: best in true basin {line['best_in_true_basin']}, {line['runs_in_true_basin']}/"
              f"{line['num_starts']} runs, chi2/N {line['best_chi2_per_n']:.2f}, {line['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
