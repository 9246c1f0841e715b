"""The floor of issue 14: the standard lenstronomy workflow (shapelet source) on the cold-start systems.

The brief's floor is that blindlens must beat what a lenstronomy user gets with a parametric
source on the same data. This script runs that workflow on exactly the observations of
``scripts/cold_start_study.py`` (``scripts/lenstronomy_systems.py``: same system index, population
and seed give the same image and noise):

* **model** (lenstronomy names): lens ``SIE + SHEAR`` (shear about (0, 0)), source ``SHAPELETS`` of
  order ``n_max`` (default 10: 66 linear amplitudes) with free ``beta`` and centre; amplitudes solved
  linearly at every likelihood call (lenstronomy's default), the PSF the true pixel kernel,
  supersampling 3 as the data were made (``supersampling_convolution=False``), the noise map the
  true constant sigma.
* **fit**: lenstronomy's ``FittingSequence``: particle swarm (``PSO``) from a cold start (theta_E
  1.2", round, centred, no shear; the simulation box's centre), then ``emcee`` (``MCMC``) from the
  swarm's best; the posterior mean and sd of the lens parameters come from the emcee chain after
  burn-in, z = (mean - truth) / sd, as the cold-start study reports for blindlens.

``--check`` verifies the data set-up: through the fitting inputs, the true lens and source (as
lenstronomy ``INTERPOL`` light) give the simulation's own chi^2/N to 1e-9.

Each system is one JSON line in ``--out`` (appended; a system already there is skipped, so a killed
run resumes). ``--report`` writes a markdown table beside it that sets the baseline against the
blindlens cold-start records given with ``--compare``.

Needs lenstronomy and emcee (``pip install -e '.[studies]'``). One process, one core; cost per
system in the table. Command used for docs/joint_inference.md::

    S="--n-max 8 --particles 40 --iterations 80 --walker-ratio 4 --burn 100 --run 100"
    python scripts/lenstronomy_baseline.py --systems 10:12 $S --out docs/calibration/lenstronomy_baseline_broad.jsonl
    python scripts/lenstronomy_baseline.py --systems 14:16 $S --out docs/calibration/lenstronomy_baseline_broad.jsonl
    python scripts/lenstronomy_baseline.py --systems 11 $S --iterations 40 --start truth --out ...  (and 14)
    python scripts/lenstronomy_baseline.py --report docs/calibration/lenstronomy_baseline_broad.jsonl \\
        --compare docs/calibration/cold_start_broad_dec05_shift.jsonl docs/calibration/cold_start_broad_dec05_shift_ss3.jsonl

References
----------
Birrer & Amara 2018, Phys. Dark Univ. 22, 189 (lenstronomy); Birrer, Amara & Refregier 2015,
ApJ 813, 102 (shapelet sources); Foreman-Mackey et al. 2013, PASP 125, 306 (emcee).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from lenstronomy_systems import (
    IMAGE_N,
    LENS_NAMES,
    PIXEL_SCALE,
    SIE_NAMES,
    SUPERSAMPLING,
    simulate_system,
    write_markdown,
)

START = {"theta_E": 1.2, "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0, "gamma1": 0.0, "gamma2": 0.0}
"""The swarm's start: the centre of the simulation box (scripts/lenstronomy_systems.py LENS_RANGES)."""
SIGMA = {"theta_E": 0.2, "e1": 0.1, "e2": 0.1, "center_x": 0.05, "center_y": 0.05, "gamma1": 0.05, "gamma2": 0.05}
LOWER = {"theta_E": 0.4, "e1": -0.5, "e2": -0.5, "center_x": -0.3, "center_y": -0.3, "gamma1": -0.2, "gamma2": -0.2}
UPPER = {"theta_E": 2.5, "e1": 0.5, "e2": 0.5, "center_x": 0.3, "center_y": 0.3, "gamma1": 0.2, "gamma2": 0.2}


def fitting_inputs(system: dict, n_max: int, start: str = "cold"):
    """lenstronomy's ``kwargs_data_joint, kwargs_model, kwargs_params`` for one simulated system.

    ``start="cold"``: the swarm starts at :data:`START` with the widths :data:`SIGMA`; ``"truth"``: at
    the true lens and source centre with a tenth of those widths (a user whose guess is perfect: what
    is left of the bias is the source model's, not the search's).
    """
    d = PIXEL_SCALE
    corner = -(IMAGE_N - 1) / 2 * d  # the convention of scripts/lenstronomy_systems.py
    area = d**2  # lenstronomy images are flux per pixel; the simulation stores surface brightness
    kwargs_data = {
        "image_data": np.asarray(system["image"], np.float64) * area,
        "background_rms": system["noise_sigma"] * area,
        "noise_map": np.full((IMAGE_N, IMAGE_N), system["noise_sigma"] * area),
        "ra_at_xy_0": corner,
        "dec_at_xy_0": corner,
        "transform_pix2angle": np.array([[d, 0.0], [0.0, d]]),
    }
    kwargs_psf = {"psf_type": "PIXEL", "kernel_point_source": np.asarray(system["psf"], np.float64)}
    kwargs_numerics = {"supersampling_factor": SUPERSAMPLING, "supersampling_convolution": False}
    data_joint = {"multi_band_list": [[kwargs_data, kwargs_psf, kwargs_numerics]], "multi_band_type": "single-band"}
    model = {"lens_model_list": ["SIE", "SHEAR"], "source_light_model_list": ["SHAPELETS"]}

    def split(table):
        return [{k: table[k] for k in SIE_NAMES}, {"gamma1": table["gamma1"], "gamma2": table["gamma2"]}]

    if start not in ("cold", "truth"):
        raise ValueError(f"start must be 'cold' or 'truth', got {start!r}.")
    first, width, centre = START, SIGMA, (0.0, 0.0)
    if start == "truth":
        first = {k: float(system["lens"][k]) for k in START}
        width = {k: 0.1 * v for k, v in SIGMA.items()}
        centre = tuple(float(c) for c in system["source_center"])
    lens = [split(first), split(width), [{}, {"ra_0": 0.0, "dec_0": 0.0}], split(LOWER), split(UPPER)]
    source = [
        [{"beta": 0.15, "center_x": centre[0], "center_y": centre[1]}],
        [{"beta": 0.05, "center_x": 0.05, "center_y": 0.05}],
        [{"n_max": int(n_max)}],
        [{"beta": 0.03, "center_x": -0.5, "center_y": -0.5}],
        [{"beta": 0.6, "center_x": 0.5, "center_y": 0.5}],
    ]
    return data_joint, model, {"lens_model": lens, "source_model": source}


def fit_system(system: dict, *, n_max: int, particles: int, iterations: int, walker_ratio: int, burn: int,
               run: int, seed: int, start: str = "cold") -> dict:
    """PSO then emcee on one system; the lens posterior's mean, sd, z and the best fit's chi^2/N."""
    from lenstronomy.Workflow.fitting_sequence import FittingSequence

    np.random.seed(seed)  # PSO and emcee draw from NumPy's global generator
    data_joint, model, params = fitting_inputs(system, n_max, start)
    likelihood = {"check_bounds": True, "source_marg": False}
    fitting = FittingSequence(data_joint, model, {}, likelihood, params, verbose=False)
    t0 = time.perf_counter()
    fitting.fit_sequence([["PSO", {"sigma_scale": 1.0, "n_particles": particles, "n_iterations": iterations}]])
    pso_s = time.perf_counter() - t0
    chains = fitting.fit_sequence([["MCMC", {"n_burn": burn, "n_run": run, "walkerRatio": walker_ratio,
                                             "sigma_scale": 0.1, "progress": False}]])
    total_s = time.perf_counter() - t0
    _, samples, names, _ = chains[-1]
    samples = np.asarray(samples)
    column = {name: j for j, name in enumerate(names)}
    truth = system["lens"]
    mean, sd, z = {}, {}, {}
    for k in LENS_NAMES:
        j = column[f"{k}_lens0"] if k in SIE_NAMES else column[f"{k}_lens1"]
        mean[k], sd[k] = float(samples[:, j].mean()), float(samples[:, j].std(ddof=1))
        z[k] = (mean[k] - truth[k]) / sd[k]
    best = fitting.best_fit()
    chi2 = best_chi2_per_n(data_joint, model, best)
    return {
        "system": system["system"], "population": system["population"], "seed": system["seed"], "n_max": n_max,
        "start": start,
        "lens_truth": truth, "mean": mean, "sd": sd, "z": z, "max_abs_z": max(abs(v) for v in z.values()),
        "chi2_best": chi2, "true_chi2": system["true_chi2_per_n"], "peak_snr": system["peak_snr"],
        "samples": int(samples.shape[0]), "pso_s": pso_s, "wall_s": total_s,
        "settings": {"particles": particles, "iterations": iterations, "walker_ratio": walker_ratio,
                     "burn": burn, "run": run, "seed": seed},
    }


def best_chi2_per_n(data_joint: dict, model: dict, best: dict) -> float:
    """Residual chi^2/N of the best fit (linear amplitudes solved), lenstronomy's own normalised residuals."""
    from lenstronomy.Analysis.image_reconstruction import MultiBandImageReconstruction

    recon = MultiBandImageReconstruction(data_joint["multi_band_list"], model, best,
                                         multi_band_type=data_joint["multi_band_type"])
    band = recon.model_band_list[0]
    return float(np.mean(band.norm_residuals**2))


def check(i: int = 10, population: str = "broad", seed: int = 0) -> int:
    """The fitting inputs at the true lens and source (``INTERPOL``) give the truth's own chi^2/N exactly."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    system = simulate_system(i, population, seed=seed)
    data_joint, _, _ = fitting_inputs(system, 8)
    kwargs_data, kwargs_psf, kwargs_numerics = data_joint["multi_band_list"][0]
    model = ImageModel(ImageData(**kwargs_data), PSF(**kwargs_psf), lens_model_class=LensModel(["SIE", "SHEAR"]),
                       source_model_class=LightModel(["INTERPOL"]), kwargs_numerics=kwargs_numerics)
    lens = system["lens"]
    kw_lens = [{k: lens[k] for k in SIE_NAMES}, {"gamma1": lens["gamma1"], "gamma2": lens["gamma2"], "ra_0": 0.0,
                                                 "dec_0": 0.0}]
    kw_source = [{"image": system["source"], "amp": 1.0, "center_x": system["source_center"][0],
                  "center_y": system["source_center"][1], "phi_G": 0.0, "scale": system["source_scale"]}]
    chi2 = float(np.mean(((kwargs_data["image_data"] - model.image(kw_lens, kw_source)) / kwargs_data["noise_map"])**2))
    ok = abs(chi2 - system["true_chi2_per_n"]) < 1e-9
    print(f"system {i}: chi^2/N of the truth through the fitting inputs {chi2:.12f}, recorded "
          f"{system['true_chi2_per_n']:.12f}: {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def parse_range(text: str) -> range:
    lo, _, hi = text.partition(":")
    return range(int(lo), int(hi)) if hi else range(int(lo), int(lo) + 1)


def done_systems(path: Path) -> set[tuple[str, int, int]]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["population"], r["system"], r["n_max"], r.get("start", "cold")) for r in rows}


def run(args) -> int:
    out = Path(args.out)
    done = done_systems(out)
    for i in parse_range(args.systems):
        if (args.population, i, args.n_max, args.start) in done:
            print(f"system {i}: already in {out}, skipped")
            continue
        system = simulate_system(i, args.population, seed=args.seed)
        record = fit_system(system, n_max=args.n_max, particles=args.particles, iterations=args.iterations,
                            walker_ratio=args.walker_ratio, burn=args.burn, run=args.run, seed=args.fit_seed + i,
                            start=args.start)
        with open(out, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        zs = " ".join(f"{k} {v:+.1f}" for k, v in record["z"].items())
        print(f"system {i}: max |z| {record['max_abs_z']:.1f} ({zs}); chi2/N {record['chi2_best']:.3f} "
              f"(truth {record['true_chi2']:.3f}); {record['wall_s'] / 60:.1f} min", flush=True)
    return 0


# ---------------------------------------------------------------------------------- the report


def blindlens_z(record: dict) -> dict[str, float]:
    """Lens z-scores of a cold-start study record: the study's own (all chains and draws pooled)."""
    return {k: float(record["params"][k]["z"]) for k in LENS_NAMES}


def calibration_row(label: str, zs: list[dict[str, float]]) -> str:
    z = np.array([[row[k] for k in LENS_NAMES] for row in zs]).ravel()
    return (f"| {label} | {len(zs)} | {z.mean():+.2f} | {z.std(ddof=1):.2f} | {np.sqrt(np.mean(z**2)):.2f} | "
            f"{np.mean(np.abs(z) < 1):.2f} | {np.mean(np.abs(z) < 1.96):.2f} | {np.abs(z).max():.1f} |")


def report(paths: list[str], compare: list[str]) -> int:
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    ours = {}
    for p in compare:  # a later file wins for a system both hold (the list is in order of preference, last best)
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("status", "ok") == "ok" and "params" in r:
                    ours[(r["population"], r["system"])] = (r, Path(p).stem)
    lines = [
        "# The floor of issue 14: lenstronomy's shapelet workflow against blindlens, same observations",
        "",
        ("Written by `scripts/lenstronomy_baseline.py --report`. lenstronomy: SIE + SHEAR, SHAPELETS source "
         "(linear amplitudes, free beta and centre), true PSF and noise, supersampling 3, PSO (from a cold start, "
         "or from the truth with a tenth of the widths) then emcee; z = (posterior mean - truth) / posterior sd. "
         "blindlens: the cold-start study's default command from a cold start, all chains pooled "
         "(`scripts/cold_start_study.py`)."),
        "",
        "## Per system",
        "",
        ("| population | system | peak SNR | lenstronomy start | n_max | lenstronomy chi^2/N - truth's "
         "| lenstronomy max abs z | lenstronomy theta_E z | blindlens chi^2/N - truth's | blindlens max abs z "
         "| blindlens theta_E z | blindlens run | lenstronomy min |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pairs: dict[str, tuple[list, list]] = {}
    for r in sorted(rows, key=lambda r: (r["population"], r["system"], r.get("start", "cold"))):
        start = r.get("start", "cold")
        mine = ours.get((r["population"], r["system"]))
        if mine is None:
            blind = "| | | | "
        else:
            rec, name = mine
            zb = blindlens_z(rec)
            pairs.setdefault(start, ([], []))[0].append(r["z"])
            pairs[start][1].append(zb)
            blind = (f"| {rec['chi2_dominant'] - rec['true_chi2']:+.3f} | {max(abs(v) for v in zb.values()):.1f} "
                     f"| {zb['theta_E']:+.1f} | {name} ")
        lines.append(f"| {r['population']} | {r['system']} | {r['peak_snr']:.0f} | {start} | {r['n_max']} "
                     f"| {r['chi2_best'] - r['true_chi2']:+.3f} | {r['max_abs_z']:.1f} | {r['z']['theta_E']:+.1f} "
                     f"{blind}| {r['wall_s'] / 60:.1f} |")
    lines += [
        "",
        "## Over the systems both ran (7 lens z-scores each)",
        "",
        "| method | systems | mean z | sd of z | rms z | 68% coverage | 95% coverage | max abs z |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for start, (lt, bl) in pairs.items():
        lines.append(calibration_row(f"lenstronomy (shapelets), PSO from {'the truth' if start == 'truth' else 'a cold start'}", lt))
        lines.append(calibration_row("blindlens (default command, cold), same systems", bl))
    out = Path(paths[0]).with_name(Path(paths[0]).stem + "_tables.md")
    write_markdown(out, lines)
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="10:17", help="system indices, 'a:b' or 'i' (default 10:17)")
    parser.add_argument("--population", default="broad", choices=("broad", "disk", "xdf"))
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (as the cold-start study's)")
    parser.add_argument("--fit-seed", type=int, default=1, help="PSO/emcee seed (plus the system index)")
    parser.add_argument("--n-max", type=int, default=10, help="shapelet order (default 10: 66 amplitudes)")
    parser.add_argument("--start", choices=("cold", "truth"), default="cold",
                        help="where the swarm starts: the box's centre (cold) or the truth (a perfect guess)")
    parser.add_argument("--particles", type=int, default=60)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--walker-ratio", type=int, default=4)
    parser.add_argument("--burn", type=int, default=200)
    parser.add_argument("--run", type=int, default=200)
    parser.add_argument("--out", default="docs/calibration/lenstronomy_baseline_broad.jsonl")
    parser.add_argument("--report", nargs="+", help="write the tables of these JSON-lines files and stop")
    parser.add_argument("--compare", nargs="*", default=[], help="blindlens cold-start records to set beside")
    parser.add_argument("--check", action="store_true", help="check the fitting inputs against the simulation")
    args = parser.parse_args(argv)
    if args.check:
        return check(parse_range(args.systems)[0], args.population, args.seed)
    if args.report:
        return report(args.report, args.compare)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
