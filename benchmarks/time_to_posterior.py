"""Time to a converged lens posterior with the default `blindlens sample`, and the previous default's
cost per sweep, measured in the same process (issue 18).

Systems: `scripts/lenstronomy_systems.py` (lenstronomy's `ImageModel`, held-out procedural galaxies
of the broad population at their own 0.05"/px, 96x96 at 0.05", PSF FWHM 0.1", supersampling 3, peak
SNR 25-77), written to `--work`. Per system:

1. **new default, to convergence**: the pipeline of `blindlens.sample_observation` with the command line's defaults
   and `--target-ess`, `--max-rhat 1.01`, `--max-minutes`: wall time to max R-hat <= 1.01 and min
   bulk ESS >= target (or what a budget reached), draws per chain, network passes per effective
   sample (the sweeps' network passes over all chains, warm-up included: the split-Gibbs move's
   denoiser passes, or a guided move's score evaluations x 2 for PiGDM's VJP; the warm-start
   trajectories before the chains are not counted; over the min-ESS lens parameter), sweeps per
   effective sample, and the start-up
   (pre-fit, warm start, compilation, warm-up) read off the first convergence check.
2. **cost per sweep, previous against new default**: the same short protocol (`--rate-warmup`
   warm-up sweeps, then two chunks of `--rate-chunk` draws) once with XLA's native convolutions
   traced (`blindlens.score_network.native_convolutions`, the default before the matrix-product
   form) and once with the default; seconds per sweep from the second chunk. The sampler's
   arithmetic is otherwise identical, so the previous default needs the same sweeps to converge:
   its projected time to the target is its start-up plus its seconds per sweep times the new
   default's sweeps to the target.

Usage:
    python benchmarks/time_to_posterior.py --systems 0:4 --work /tmp/ttp [--target-ess 400 --max-minutes 15]
    [--skip-rates: only the runs to convergence]
Prints markdown tables (recorded in docs/performance.md with the command).
"""

import argparse
import importlib.util
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

from blindlens.pipeline import DEFAULTS, _sample, source_move
from blindlens.score_network import native_convolutions

PASSES_PER_EVAL = {"pigdm": 2, "calibrated": 2, "cla": 1}
"""Network passes per prior-score evaluation of a guided move (PiGDM and CalibratedTweedie add a VJP)."""


def passes_per_eval(options) -> int:
    """The split-Gibbs move counts its unguided denoiser's passes (1 per evaluation) in
    ``num_score_evals``; a guided move's evaluations cost the guidance's passes each."""
    return 1 if source_move(options) == "split-gibbs" else PASSES_PER_EVAL[options.guidance]


def lenstronomy_systems():
    path = Path(__file__).resolve().parents[1] / "scripts" / "lenstronomy_systems.py"
    spec = importlib.util.spec_from_file_location("lenstronomy_systems", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(obs, out, options):
    # Compiled functions are cached by the network's structure, not by how it was traced: start
    # every measurement from empty caches so none reuses another's convolution form.
    jax.clear_caches()
    t = time.time()
    idata, _, chain_run = _sample(str(obs), str(out), options, progress=False, verbose=False, figures=False)
    return idata, chain_run, time.time() - t


def seconds_per_draw(first, last) -> float:
    """Wall seconds per draw (all chains together) between two convergence checks (NaN if one)."""
    return (last.seconds - first.seconds) / (last.draws - first.draws) if last.draws > first.draws else float("nan")


def converged_row(i, obs, truth, work, args):
    options = DEFAULTS.replace(target_ess=args.target_ess, max_rhat=args.max_rhat, max_minutes=args.max_minutes,
                               checkpoint_every=args.chunk, no_resume=True, fits_products=False, truth=str(truth))
    idata, chain_run, wall = run(obs, work / f"converged_{i}.nc", options)
    history = chain_run.history
    last = history[-1]
    evals = np.asarray(idata.sample_stats["num_score_evals"].values)[:, -1].sum()
    passes = passes_per_eval(options) * float(evals)
    sweeps = options.chains * (options.warmup + last.draws)
    rate = seconds_per_draw(history[0], last)
    startup = history[0].seconds - rate * (options.warmup + history[0].draws)
    return {"system": i, "converged": chain_run.converged, "stop": chain_run.stop_reason,
            "seconds_to_stop": last.seconds, "wall": wall, "draws": last.draws, "max_rhat": last.max_rhat,
            "worst": last.worst, "min_ess": last.min_ess, "least": last.least,
            "passes_per_ess": passes / max(last.min_ess, 1e-9), "sweeps_per_ess": sweeps / max(last.min_ess, 1e-9),
            "startup": startup, "s_per_sweep": rate / options.chains, "sweeps": sweeps}


def sweep_rate(i, obs, work, args, native, chain_method="sequential"):
    options = DEFAULTS.replace(warmup=args.rate_warmup, target_ess=1e9, draws=2 * args.rate_chunk,
                               checkpoint_every=args.rate_chunk, no_resume=True, fits_products=False,
                               chain_method=chain_method, chains=args.rate_chains)
    out = work / f"rate_{'native' if native else 'default'}_{chain_method}_{i}.nc"
    if native:
        with native_convolutions():
            chain_run = run(obs, out, options)[1]
    else:
        chain_run = run(obs, out, options)[1]
    first = chain_run.history[0]
    rate = seconds_per_draw(first, chain_run.history[-1])
    return rate / options.chains, first.seconds - rate * (options.warmup + first.draws)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="0:4", help="system indices a:b (default 0:4)")
    parser.add_argument("--population", default="broad")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--target-ess", type=float, default=400.0)
    parser.add_argument("--max-rhat", type=float, default=1.01)
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--chunk", type=int, default=100, help="draws per chain between convergence checks")
    parser.add_argument("--rate-warmup", type=int, default=20)
    parser.add_argument("--rate-chunk", type=int, default=10)
    parser.add_argument("--rate-chains", type=int, default=2, help="chains of the cost-per-sweep runs")
    parser.add_argument("--skip-converged", action="store_true", help="only the cost-per-sweep comparison")
    parser.add_argument("--skip-rates", action="store_true",
                        help="only the runs to convergence (no previous-default projection)")
    args = parser.parse_args()
    a, b = (int(v) for v in args.systems.split(":"))
    systems = lenstronomy_systems()
    args.work.mkdir(parents=True, exist_ok=True)
    rows, rates = [], []
    for i in range(a, b):
        folder = args.work / f"system_{i}"
        obs, truth = systems.write_system(systems.simulate_system(i, args.population), folder)
        if not args.skip_rates:
            native, native_start = sweep_rate(i, obs, folder, args, native=True)
            new, new_start = sweep_rate(i, obs, folder, args, native=False)
            vec, _ = sweep_rate(i, obs, folder, args, native=False, chain_method="vectorized")
            rates.append({"system": i, "native": native, "native_start": native_start, "new": new,
                          "new_start": new_start, "vectorized": vec})
            print(f"system {i}: s per chain-sweep {native:.3f} (native convolutions) vs {new:.3f} (default) vs "
                  f"{vec:.3f} (default, {args.rate_chains} chains vectorized)", flush=True)
        if not args.skip_converged:
            rows.append(converged_row(i, obs, truth, folder, args))
            print(rows[-1], flush=True)
    print(f"\n{args.population} systems {args.systems}, default `blindlens sample` (2 chains, PiGDM, warm-up "
          f"{DEFAULTS.warmup}), target max R-hat <= {args.max_rhat} and min bulk ESS >= {args.target_ess:g}, "
          f"budget {args.max_minutes:g} min\n")
    if rates:
        print(f"s per sweep of one chain ({args.rate_chains} chains, {args.rate_warmup} warm-up sweeps, then 2 x "
              f"{args.rate_chunk} draws; the rate of the second chunk):\n")
        print("| system | previous (native conv), sequential | new (default), sequential | speed-up | "
              "new, chains vectorized (jax.vmap) | start-up s: previous | new |")
        print("|---|---|---|---|---|---|---|")
    for r in rates:
        print(f"| {r['system']} | {r['native']:.3f} | {r['new']:.3f} | {r['native'] / r['new']:.1f}x | "
              f"{r['vectorized']:.3f} | {r['native_start']:.0f} | {r['new_start']:.0f} |")
    if rows:
        print("\n| system | stop | min to stop | draws/chain | max R-hat | min ESS | network passes / ESS | "
              "sweeps / ESS | start-up min | s per sweep | previous default, projected min to the same point |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        by_system = {q["system"]: q for q in rates}
        for r in rows:
            q = by_system.get(r["system"])
            projected = "n/a" if q is None else f"{(q['native_start'] + q['native'] * r['sweeps']) / 60:.1f}"
            print(f"| {r['system']} | {r['stop']} | {r['seconds_to_stop'] / 60:.1f} | {r['draws']} | "
                  f"{r['max_rhat']:.3f} ({r['worst']}) | {r['min_ess']:.0f} ({r['least']}) | {r['passes_per_ess']:.0f} | "
                  f"{r['sweeps_per_ess']:.1f} | {r['startup'] / 60:.1f} | {r['s_per_sweep']:.2f} | {projected} |")


if __name__ == "__main__":
    main()
