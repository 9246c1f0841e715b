"""The pure core's batch mode against the NumPyro kernel, on the gold-standard problem (issue 16).

Two tables, printed and optionally written as JSON:

1. **Lens move.** ``theta_E`` effective samples per sweep and per second for the NumPyro kernel
   (:class:`blindlens.BlindLensGibbs`: NUTS with the curvature metric) and for the pure core's
   fixed-length HMC (:mod:`blindlens.gibbs_core`) with 2, 3 and 5 leapfrog steps, same source step
   (exact Gaussian guidance, partial refresh), 2 chains, same warm-up and number of draws, several
   seeds. Compile time is excluded from the per-sweep times (each configuration runs once to
   compile, then is timed on a second seed onwards).
2. **Many lenses.** ``N`` gold-standard lenses (different sources and noise) three ways in one
   process: (a) a NumPyro kernel per lens (one compilation each, as the single-lens pipeline),
   (b) the core, one lens at a time through one compiled program, (c) one vmap batch of all N.
   Wall time per lens with and without compilation.

Command (docs/performance.md, "Batches of lenses")::

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/lens_batch.py --json benchmarks/results/lens_batch.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from blindlens.testing.gold_problem import LowRankExactGuidance, Problem

from blindlens.gibbs_core import GibbsCore
from blindlens.gibbs_kernel import BlindLensGibbs, GibbsDDRMConfig
from blindlens.lens_batch import sample_batch
from blindlens.numpyro_model import joint_model
from blindlens.source_posterior import SourceSamplerConfig


def _kernel(problem, observation):
    exact = LowRankExactGuidance(basis=problem.basis)
    return BlindLensGibbs(problem.lens_model, observation, problem.prior,
                          source_config=SourceSamplerConfig(guidance=exact, num_steps=40),
                          warm_start=GibbsDDRMConfig(guidance=exact, num_steps=40), source_grid=problem.source_grid)


def _core(problem, model, warmup, leapfrog):
    exact = LowRankExactGuidance(basis=problem.basis)
    return GibbsCore.default(problem.lens_model, problem.prior, model,
                             source_config=SourceSamplerConfig(guidance=exact, num_steps=40),
                             num_warmup=warmup, num_leapfrog=leapfrog)


def _start(problem, n_lens, n_chain):
    return {k: jnp.full((n_lens, n_chain), v) for k, v in problem.truth.items() if k in problem.free}


def run_numpyro(problem, key, warmup, draws):
    from numpyro.infer import MCMC, init_to_value

    kernel = _kernel(problem, problem.observation)
    kernel.init_strategy = init_to_value(values={k: problem.truth[k] for k in problem.free})
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=2, chain_method=jax.vmap,
                progress_bar=False)
    t0 = time.perf_counter()
    mcmc.run(key)
    theta = np.asarray(mcmc.get_samples(group_by_chain=True)["theta_E"])
    steps = float(np.mean(np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])))
    return theta, time.perf_counter() - t0, steps


def run_core(problem, key, warmup, draws, leapfrog):
    model = joint_model(problem.lens_model, problem.observation, problem.source_grid)
    core = _core(problem, model, warmup, leapfrog)
    t0 = time.perf_counter()
    out = sample_batch(key, core, [model], num_samples=draws, starts=_start(problem, 1, 2), keep_source=False)
    theta = np.asarray(out.lens["theta_E"][0])
    return theta, time.perf_counter() - t0, float(leapfrog)


def lens_move_table(seeds, warmup, draws) -> list[dict]:
    problem = Problem(free=("theta_E",))
    configs = [("NumPyro kernel (NUTS, curvature metric)", lambda k: run_numpyro(problem, k, warmup, draws))]
    for leapfrog in (2, 3, 5):
        configs.append((f"core HMC, {leapfrog} leapfrog steps",
                        lambda k, L=leapfrog: run_core(problem, k, warmup, draws, L)))
    rows = []
    for label, run in configs:
        compile_run = run(jr.key(1000))[1]
        for seed in seeds:
            theta, wall, steps = run(jr.key(seed))
            ess = float(az.ess(theta))
            sweeps = theta.size + 2 * warmup
            rows.append({"config": label, "seed": seed, "mean": float(theta.mean()), "sd": float(theta.std()),
                         "ess": ess, "ess_per_sweep": ess / theta.size, "leapfrog_per_sweep": steps,
                         "seconds_per_sweep": wall / sweeps, "ess_per_second": ess / wall,
                         "first_run_seconds": compile_run})
            print(f"{label:<42} seed {seed}: ESS {ess:6.0f} ({ess / theta.size:.3f}/sweep), "
                  f"{steps:.1f} leapfrog/sweep, {1e3 * wall / sweeps:.1f} ms/sweep, first run {compile_run:.1f} s",
                  flush=True)
    return rows


def many_lenses_table(n_lens, warmup, draws) -> dict:
    from numpyro.infer import MCMC, init_to_value

    problems = [Problem(free=("theta_E",), seed=s, theta_E=0.75 + 0.02 * s) for s in range(n_lens)]
    base = problems[0]
    models = [joint_model(base.lens_model, p.observation, base.source_grid) for p in problems]
    out = {}

    t0 = time.perf_counter()
    for p in problems:  # (a) one NumPyro kernel per lens: each compiles its own program
        kernel = _kernel(base, p.observation)
        kernel.init_strategy = init_to_value(values={"theta_E": p.truth["theta_E"]})
        MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=2, chain_method=jax.vmap,
             progress_bar=False).run(jr.key(0))
    out["(a) NumPyro kernel per lens"] = time.perf_counter() - t0

    core = _core(base, models[0], warmup, 3)
    starts = {"theta_E": jnp.asarray([[p.truth["theta_E"]] * 2 for p in problems])}
    t0 = time.perf_counter()
    for i, m in enumerate(models):  # (b) the core, one lens at a time, one compiled program
        jax.block_until_ready(sample_batch(jr.key(0), core, [m], num_samples=draws,
                                           starts={"theta_E": starts["theta_E"][i:i + 1]}, first_index=i,
                                           keep_source=False).lens)
    out["(b) core, lenses in sequence"] = time.perf_counter() - t0

    t0 = time.perf_counter()  # (c) one vmap batch (the compilation for N lenses is new: counted)
    jax.block_until_ready(sample_batch(jr.key(0), core, models, num_samples=draws, starts=starts,
                                       batch_size=n_lens, keep_source=False).lens)
    out["(c) core, one vmap batch"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # (c) again: a second batch of the same shapes reuses the program
    jax.block_until_ready(sample_batch(jr.key(1), core, models, num_samples=draws, starts=starts,
                                       batch_size=n_lens, keep_source=False).lens)
    out["(c') same batch again (compiled)"] = time.perf_counter() - t0
    for label, wall in out.items():
        print(f"{label:<40} {wall:8.1f} s  {wall / n_lens:7.2f} s per lens", flush=True)
    return out


def demo_table(warmup, draws, seeds) -> list[dict]:
    """The demo's observation (bundled SIE + shear lens and galaxy, 72x72 at 0.05", shipped prior,
    PiGDM, 40 steps, partial refresh): lens ESS per sweep and network passes per effective sample,
    NumPyro kernel against the core (both started at the true lens with a source drawn given it)."""
    from numpyro.infer import MCMC, init_to_value

    from blindlens.image_sets import bin_images
    from blindlens.lens_config import load_lens_config
    from blindlens.likelihood_score import PiGDM
    from blindlens.numpyro_model import lens_site_names, sie_shear
    from blindlens.pipeline import truth_values
    from blindlens.score_prior import ScorePrior
    from blindlens.simulation import (
        example_lens_path,
        example_source_path,
        load_source,
        simulate_observation,
    )

    prior = ScorePrior.shipped("default")
    lens = load_lens_config(example_lens_path())
    source = bin_images(np.asarray(load_source(example_source_path()), float), 2)
    obs, _ = simulate_observation(lens, source, 0.1, key=jr.key(1000), image_shape=(72, 72), pixel_scale=0.05,
                                  psf_fwhm=0.1, noise_sigma=float(source.max()) / 20.0, supersampling=2)
    sites = lens_site_names(sie_shear)
    truth = truth_values(lens, sites)
    config = SourceSamplerConfig(guidance=PiGDM(), num_steps=40)
    rows = []
    for seed in seeds:
        kernel = BlindLensGibbs(sie_shear, obs, prior, source_config=config, max_tree_depth=5,
                                init_strategy=init_to_value(values=truth))
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=2, chain_method="sequential",
                    progress_bar=False)
        t0 = time.perf_counter()
        mcmc.run(jr.key(seed))
        wall = time.perf_counter() - t0
        samples = mcmc.get_samples(group_by_chain=True)
        evals = float(np.sum(np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_score_evals"])[:, -1]))
        rows.append(_demo_row("NumPyro kernel (NUTS, curvature metric)", seed, samples, sites, evals, wall,
                              2 * (warmup + draws)))
        model = kernel.joint_model
        for leapfrog in (2, 3):
            core = GibbsCore.default(sie_shear, prior, model, source_config=config, num_warmup=warmup,
                                     num_leapfrog=leapfrog)
            t0 = time.perf_counter()
            out = sample_batch(jr.key(seed), core, [model], num_samples=draws, keep_source=False,
                               starts={n: jnp.full((1, 2), truth[n]) for n in sites})
            jax.block_until_ready(out.lens)
            wall = time.perf_counter() - t0
            evals = float(np.sum(np.asarray(out.info.num_score_evals[0, :, -1])))
            rows.append(_demo_row(f"core HMC, {leapfrog} leapfrog steps", seed, {n: out.lens[n][0] for n in sites},
                                  sites, evals, wall, 2 * (warmup + draws)))
    return rows


def _demo_row(label, seed, samples, sites, evals, wall, sweeps) -> dict:
    ess = {n: float(az.ess(np.asarray(samples[n]))) for n in sites}
    worst = min(ess, key=ess.get)
    n = np.asarray(samples[sites[0]]).size
    row = {"config": label, "seed": seed, "ess": ess, "min_ess": ess[worst], "min_ess_site": worst,
           "min_ess_per_sweep": ess[worst] / n, "passes_per_ess": evals / ess[worst], "seconds": wall,
           "seconds_per_sweep": wall / sweeps}
    print(f"{label:<42} seed {seed}: min ESS {ess[worst]:.0f} ({worst}; {ess[worst] / n:.3f}/sweep), "
          f"{evals / ess[worst]:.0f} network passes per ESS, {wall:.0f} s incl. compile", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--lenses", type=int, default=8)
    parser.add_argument("--batch-draws", type=int, default=100)
    parser.add_argument("--json", default=None)
    parser.add_argument("--demo", action="store_true", help="only the demo-observation table (shipped prior)")
    parser.add_argument("--demo-warmup", type=int, default=50)
    parser.add_argument("--demo-draws", type=int, default=300)
    args = parser.parse_args()
    print(f"JAX {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    if args.demo:
        rows = demo_table(args.demo_warmup, args.demo_draws, args.seeds)
        if args.json:
            Path(args.json).write_text(json.dumps({"jax": jax.__version__, "demo": rows}, indent=1))
        return 0
    rows = lens_move_table(args.seeds, args.warmup, args.draws)
    many = many_lenses_table(args.lenses, args.warmup, args.batch_draws)
    print("\n| lens move | ESS / sweep (mean over seeds) | leapfrog / sweep | ms / sweep | ESS / s |")
    print("|---|---|---|---|---|")
    for label in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == label]
        print(f"| {label} | {np.mean([r['ess_per_sweep'] for r in rs]):.3f} "
              f"(min {min(r['ess_per_sweep'] for r in rs):.3f}) | {np.mean([r['leapfrog_per_sweep'] for r in rs]):.1f} "
              f"| {1e3 * np.mean([r['seconds_per_sweep'] for r in rs]):.1f} | {np.mean([r['ess_per_second'] for r in rs]):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"jax": jax.__version__, "lens_move": rows, "many_lenses": many,
                                               "lenses": args.lenses, "warmup": args.warmup,
                                               "batch_draws": args.batch_draws}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
