"""Source-pixel calibration with the true lens fixed (issue 19): guided PiGDM draws, and the same polished by split Gibbs.

Systems are simulated independently by lenstronomy (``scripts/lenstronomy_systems.py``: held-out
galaxies at 0.05"/pixel, 96 x 96 image, supersampling 3, PSF FWHM 0.1", peak SNR 25-77). The lens is
fixed at its true value, the source grid is the shipped ``highres`` prior's 64 x 64 at 0.05" (or
``--prior``'s: on a finer grid the truth is lenstronomy's bilinear interpolant at its pixel centres) centred
on the true source centre, so the true source is representable on the grid (exactly on its own
0.05" grid; to the interpolation's second order on a finer one). Per system and
method:

* residual chi^2/N of every sample (mean) against the true source's own (through lenstronomy, and
  through blindlens's operator: their difference is the operators' disagreement);
* galaxy-pixel coverage (pixels where the truth exceeds 5% of its peak) of the central 68% / 95%
  intervals of the samples, and the sd of z = (truth - mean) / sd there; the column "exact" is
  what an exact sampler gives with the same number of exchangeable draws (coverage of rank
  intervals, computed by simulation);
* the source NRMSE of the posterior mean, ``|mean - truth| / |truth|``;
* the polished draws as they are (the prior at its noise floor sigma(t_final), see
  ``blindlens.split_gibbs``) and after a final Tweedie denoise (``+tweedie``, the convention of the
  guided draws);
* network passes and seconds per sample; for chains, the split R-hat of the per-sample chi^2 and of
  the galaxy flux across chains.

Usage::

    JAX_PLATFORMS=cpu python scripts/source_coverage_study.py --systems broad:0:20 xdf:0:4 \
        --out docs/source_coverage

``results.json`` in ``--out`` is rewritten after every system; a rerun with the same settings skips
the systems already there (a killed run resumes; more systems extend it) and tabulates them all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lenstronomy_systems as ls

from blindlens.observation import Observation
from blindlens.pipeline import load_source_prior
from blindlens.source_posterior import (
    SourceSamplerConfig,
    fixed_lens_operator,
    sample_source_posterior,
)
from blindlens.split_gibbs import SplitGibbsConfig, sample_source_posterior_split_gibbs

GALAXY_FRACTION = 0.05


def exact_coverage(num_draws: int, levels=(0.68, 0.95), trials: int = 200_000, seed: int = 0) -> dict:
    """Coverage of a truth exchangeable with ``num_draws`` exact draws by their central quantile intervals."""
    rng = np.random.default_rng(seed)
    u = rng.random((trials, num_draws + 1))
    truth, draws = u[:, 0], u[:, 1:]
    out = {}
    for level in levels:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out[level] = float(np.mean((truth >= lo) & (truth <= hi)))
    return out


def on_grid(truth: np.ndarray, factor: int) -> np.ndarray:
    """The true source on a grid ``factor`` times finer over the same field (``fine`` on 0.05"
    truths): lenstronomy's ``INTERPOL`` source is the bilinear interpolant of the truth's pixel
    values, so the finer grid's truth is that interpolant at the finer pixel centres (zero beyond
    the outermost pixels, as the field's edge is empty)."""
    if factor == 1:
        return truth
    n = truth.shape[-1]
    centres = (np.arange(n * factor) + 0.5) / factor - 0.5  # in units of the truth's pixels
    i0 = np.floor(centres).astype(int)  # -1 .. n-1: the zero padding below covers both ends
    w = centres - i0
    padded = np.pad(truth, 1)
    rows = padded[i0 + 1] * (1 - w)[:, None] + padded[i0 + 2] * w[:, None]
    return rows[:, i0 + 1] * (1 - w)[None, :] + rows[:, i0 + 2] * w[None, :]


def metrics(samples, truth, op, data, sigma, true_chi2_lenstronomy) -> dict:
    samples = np.asarray(samples, np.float64)
    flat = samples.reshape(-1, *samples.shape[-2:])
    models = np.asarray(jax.vmap(op)(jnp.asarray(flat, jnp.float32)), np.float64)
    chi2 = np.mean(((data - models) / sigma) ** 2, axis=(1, 2))
    truth = on_grid(truth, flat.shape[-1] // truth.shape[-1])
    truth_op_chi2 = float(np.mean(((data - np.asarray(op(jnp.asarray(truth, jnp.float32)))) / sigma) ** 2))
    mean, sd = flat.mean(0), flat.std(0, ddof=1)
    galaxy = truth > GALAXY_FRACTION * truth.max()
    out = {"num_draws": int(flat.shape[0]), "chi2_per_n": float(chi2.mean()), "chi2_per_n_sd": float(chi2.std()),
           "true_chi2_per_n_lenstronomy": float(true_chi2_lenstronomy), "true_chi2_per_n_operator": truth_op_chi2,
           "nrmse": float(np.linalg.norm(mean - truth) / np.linalg.norm(truth)),
           "galaxy_pixels": int(galaxy.sum())}
    for level in (0.68, 0.95):
        lo, hi = np.quantile(flat, [(1 - level) / 2, (1 + level) / 2], axis=0)
        inside = (truth >= lo) & (truth <= hi)
        out[f"galaxy_coverage_{int(level * 100)}"] = float(inside[galaxy].mean())
    z = (truth - mean) / np.maximum(sd, 1e-12)
    out["galaxy_z_sd"] = float(z[galaxy].std())
    out["galaxy_z_mean"] = float(z[galaxy].mean())
    return out


def run_system(population: str, i: int, prior, args) -> dict:
    system = ls.simulate_system(i, population)
    obs = Observation(system["image"], system["noise_sigma"], system["psf"], ls.PIXEL_SCALE)
    lens = ls.blindlens_lens(system["lens"])
    op = fixed_lens_operator(obs, lens, prior, source_center=system["source_center"], supersampling=ls.SUPERSAMPLING)
    data = np.asarray(system["image"], np.float64)
    sigma = float(system["noise_sigma"])
    truth = np.asarray(system["source"], np.float64)
    key = jr.key(1000 * i + ls.POPULATIONS.index(population))
    k_pigdm, k_sg = jr.split(key)
    rows = {}

    t0 = time.time()
    config = SourceSamplerConfig(num_steps=args.pigdm_steps)
    draws = np.asarray(sample_source_posterior(k_pigdm, prior, op, jnp.asarray(data, jnp.float32), sigma,
                                               num_samples=args.pigdm_samples, config=config))
    seconds = time.time() - t0
    rows["pigdm"] = metrics(draws, truth, op, data, sigma, system["true_chi2_per_n"])
    rows["pigdm"].update(seconds=seconds, seconds_per_sample=seconds / args.pigdm_samples,
                         network_passes_per_sample=2 * args.pigdm_steps + 1)

    # every guided draw polished by exact split-Gibbs moves; states kept after every `--every` moves
    sg_config = SplitGibbsConfig(coupling=args.coupling, denoise_steps=args.denoise_steps, solver=args.solver,
                                 denoise_step_size=None)  # a fixed count, as its tables were measured
    t0 = time.time()
    chains = np.asarray(sample_source_posterior_split_gibbs(
        k_sg, prior, op, jnp.asarray(data, jnp.float32), sigma, jnp.asarray(draws, jnp.float32),
        num_samples=args.moves // args.every, burn_in=0, thin=args.every, config=sg_config))
    seconds = time.time() - t0
    denoise = jax.jit(jax.vmap(lambda x: prior.denoise(x, sg_config.t_final)))
    for j in range(chains.shape[1]):
        moves = (j + 1) * args.every
        for suffix, states in (("", chains[:, j]), ("+tweedie", np.asarray(denoise(jnp.asarray(chains[:, j]))))):
            name = f"pigdm+split_gibbs:{moves}{suffix}"
            rows[name] = metrics(states, truth, op, data, sigma, system["true_chi2_per_n"])
            rows[name].update(seconds=rows["pigdm"]["seconds"] + seconds * moves / args.moves,
                              seconds_per_sample=rows["pigdm"]["seconds_per_sample"]
                              + seconds * moves / args.moves / args.pigdm_samples,
                              network_passes_per_sample=2 * args.pigdm_steps + 1
                              + sg_config.network_passes_per_move * moves + len(suffix) // len("+tweedie"))
    # how far the moves carry a draw: correlation of the galaxy pixels with the guided start
    fine_truth = on_grid(truth, draws.shape[-1] // truth.shape[-1])
    galaxy = fine_truth > GALAXY_FRACTION * fine_truth.max()
    dev0 = draws[:, galaxy] - draws[:, galaxy].mean(0)
    dev1 = chains[:, -1][:, galaxy] - chains[:, -1][:, galaxy].mean(0)
    rows[f"pigdm+split_gibbs:{args.moves}"]["start_correlation"] = float(
        np.sum(dev0 * dev1) / np.sqrt(np.sum(dev0**2) * np.sum(dev1**2)))
    return {"population": population, "system": i, "peak_snr": system["peak_snr"], "methods": rows}


def parse_systems(specs):
    out = []
    for spec in specs:
        population, start, stop = spec.split(":")
        out += [(population, i) for i in range(int(start), int(stop))]
    return out


def summarise(results, args) -> str:
    exact = exact_coverage(args.pigdm_samples)
    lines = [f"Exact sampler with {args.pigdm_samples} exchangeable draws: galaxy coverage "
             f"{exact[0.68]:.3f} / {exact[0.95]:.3f}.", "",
             "| method | population | systems | sample chi²/N − truth's (± se) | galaxy coverage 68% / 95% "
             "| galaxy z sd (median) | NRMSE (median) | network passes / sample | s / sample |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in results[0]["methods"]:
        for population in sorted({r["population"] for r in results}):
            rows = [r["methods"][method] for r in results if r["population"] == population]
            d = np.array([r["chi2_per_n"] - r["true_chi2_per_n_operator"] for r in rows])
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            lines.append(
                f"| {method} | {population} | {len(rows)} | {d.mean():+.4f} ± {se:.4f} "
                f"| {np.mean([r['galaxy_coverage_68'] for r in rows]):.3f} / "
                f"{np.mean([r['galaxy_coverage_95'] for r in rows]):.3f} "
                f"| {np.median([r['galaxy_z_sd'] for r in rows]):.2f} | {np.median([r['nrmse'] for r in rows]):.3f} "
                f"| {np.mean([r['network_passes_per_sample'] for r in rows]):.0f} "
                f"| {np.mean([r['seconds_per_sample'] for r in rows]):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", default=["broad:0:20", "xdf:0:4"], help="population:start:stop")
    p.add_argument("--prior", default="highres")
    p.add_argument("--pigdm-samples", type=int, default=32)
    p.add_argument("--pigdm-steps", type=int, default=50)
    p.add_argument("--moves", type=int, default=20, help="split-Gibbs moves after each guided draw")
    p.add_argument("--every", type=int, default=5, help="report the draws after every this many moves")
    p.add_argument("--coupling", type=float, default=0.8)
    p.add_argument("--denoise-steps", type=int, default=10)
    p.add_argument("--solver", default="heun")
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON and the Markdown table")
    args = p.parse_args(argv)
    prior = load_source_prior(args.prior)
    results, path = [], None if args.out is None else args.out / "results.json"
    if path is not None and path.exists():  # resume: keep the systems already done with the same settings
        done = json.loads(path.read_text())
        kept = {k: v for k, v in done["settings"].items() if k not in ("systems", "out")}
        mine = {k: v for k, v in vars(args).items() if k not in ("systems", "out")}
        if kept != mine:
            raise SystemExit(f"{path} was made with other settings ({kept}); use another --out.")
        results = done["systems"]
        print(f"resuming {path}: {len(results)} systems done")
    finished = {(r["population"], r["system"]) for r in results}
    t_start = time.time()
    for population, i in parse_systems(args.systems):
        if (population, i) in finished:
            continue
        r = run_system(population, i, prior, args)
        results.append(r)
        line = "  ".join(
            f"{m}: chi2/N {v['chi2_per_n']:.4f} (truth {v['true_chi2_per_n_operator']:.4f}) "
            f"cov {v['galaxy_coverage_68']:.2f}/{v['galaxy_coverage_95']:.2f} zsd {v['galaxy_z_sd']:.2f} "
            f"nrmse {v['nrmse']:.3f} {v['seconds']:.0f}s"
            for m, v in r["methods"].items())
        print(f"{population}:{i} snr {r['peak_snr']:.0f}  {line}  [{(time.time() - t_start) / 60:.1f} min]", flush=True)
        if path is not None:  # after every system, so that a killed run resumes
            args.out.mkdir(parents=True, exist_ok=True)
            systems = sorted({f"{r['population']}:{r['system']}" for r in results})
            path.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out), "systems": systems},
                                        "systems": results}, indent=1))
    table = summarise(results, args)
    print(table)
    if args.out is not None:
        (args.out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
