"""The split-Gibbs sweep's cost, previous against new default, and the denoise's accuracy (issue 18).

On lenstronomy systems (`scripts/lenstronomy_systems.py`: 96x96 at 0.05", supersampling 3, held-out
broad galaxies), with the command line's own model (`pipeline.build_kernel`: the shipped `highres`
prior, the sampled grid placement) at the true lens, in one process:

1. **Cost per sweep** of the pure core's sweep (`GibbsCore.sweep`, after warm-up: the split-Gibbs
   source move and one HMC lens transition) with a previous default move (``--previous denoise``: 10
   Heun denoise steps, 30 power iterations, a degree-24 Chebyshev expansion; ``--previous
   chebyshev``: only the expansion at degree 24) and the new one (steps chosen by the interval, 8
   power iterations, degree 12):
   seconds (median of `--rounds` rounds of `--repeats` sweeps, the two taking turns) and network
   passes per sweep. The moves target the same posterior; what differs is the cost.
2. **Accuracy of the denoise** `s | u` against a 40-step reference, at the system's own `rho` and at
   3x and 10x it (noisier data): the denoise's steps, the rms over pixels of the per-pixel mean
   difference in units of its Monte-Carlo error (1 when the two agree), and the ratio of the mean
   per-pixel variances (`--draws` draws from one `u` each).

Usage:
    python benchmarks/split_gibbs_sweep.py --systems 0:3 --work /tmp/sgs
    python benchmarks/split_gibbs_sweep.py --systems 0:3 --work /tmp/sgs --previous chebyshev --skip-accuracy
Prints markdown tables (recorded in docs/performance.md with the command).
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from time_to_posterior import lenstronomy_systems  # this folder: the systems' loader

from blindlens.inference.gibbs_core import GibbsCore
from blindlens.inference.numpyro_model import lens_site_names
from blindlens.io.observation import load_observation
from blindlens.io.simulation import load_truth
from blindlens.pipeline import (
    DEFAULTS,
    build_kernel,
    load_lens_model,
    run_lens_model,
    truth_values,
)
from blindlens.prior.gaussian_prior import inverse_noise_variance
from blindlens.source.split_gibbs import (
    SplitGibbsConfig,
    _denoise_from,
    coupling_sigma,
    denoise_step_count,
)
from blindlens.source_setup import load_source_prior

PREVIOUSLY = {  # the default before a change: --previous NAME
    "denoise": SplitGibbsConfig(denoise_steps=10, denoise_step_size=None, power_iterations=30, chebyshev_degree=24),
    "chebyshev": SplitGibbsConfig(chebyshev_degree=24),
}
PREVIOUS = PREVIOUSLY["denoise"]
NEW = SplitGibbsConfig()
REFERENCE = SplitGibbsConfig(denoise_steps=40, denoise_step_size=None)


def setup(folder: Path, prior):
    """The CLI's joint model of one system and its lens at the truth (placement 0)."""
    obs = load_observation(str(folder / "obs.fits"))
    truth = load_truth(str(folder / "truth.npz"))
    lens_model = run_lens_model(load_lens_model("sie+shear"), DEFAULTS, obs, prior)
    sites = lens_site_names(lens_model)
    start = {**{s: 0.0 for s in sites}, **truth_values(truth["lens"], sites)}
    start = {k: jnp.asarray(v, jnp.float32) for k, v in start.items()}
    center = tuple(float(v) for v in truth["source_center"])
    model = build_kernel(lens_model, obs, prior, DEFAULTS, center=center).joint_model
    return model, start


def sweep_costs(model, start, prior, rounds: int, repeats: int, previous=PREVIOUS):
    runs = {}
    for name, config in (("previous", previous), ("new", NEW)):
        core = GibbsCore.default(model.lens_model, prior, model, split_gibbs=config, num_warmup=1)
        state = core.init(jr.key(0), model, start)
        sweep = jax.jit(lambda k, s, core=core: core.sweep(k, s, model, warmup=False, descend=False)[0])
        after = jax.block_until_ready(sweep(jr.key(1), state))  # compile
        runs[name] = (sweep, state, int(after.num_score_evals - state.num_score_evals), [])
    for r in range(rounds):
        for sweep, state, _, times in runs.values():
            t0 = time.perf_counter()
            for i in range(repeats):
                state = sweep(jr.key(100 * r + i), state)
            jax.block_until_ready(state)
            times.append((time.perf_counter() - t0) / repeats)
    return {name: (float(np.median(times)), passes) for name, (_, _, passes, times) in runs.items()}


def denoise_accuracy(model, start, prior, draws: int):
    core = GibbsCore.default(model.lens_model, prior, model, split_gibbs=NEW, num_warmup=1)
    state = core.init(jr.key(0), model, start)
    op, data, noise = core._source_inputs(state.lens, model)
    w = inverse_noise_variance(noise, op.image_shape, op).astype(data.dtype)
    rho = coupling_sigma(None, prior, op, w, NEW)
    rows = []
    for mult in (1.0, 3.0, 10.0):
        r = rho * mult
        u = state.source + r * jr.normal(jr.key(7), state.source.shape, state.source.dtype)
        out = {}
        for i, (name, config) in enumerate((("reference", REFERENCE), ("previous", PREVIOUS), ("new", NEW))):
            f = jax.jit(jax.vmap(lambda k, c=config, u=u, r=r: _denoise_from(k, prior, u, r, c)[0]))
            x = np.asarray(f(jr.split(jr.key(10 + i), draws)), np.float64)
            out[name] = (x, int(denoise_step_count(prior, r, config)))
        ref = out["reference"][0]
        m_ref, v_ref = ref.mean(0), ref.var(0)
        row = {"mult": mult, "rho": float(r)}
        for name in ("previous", "new"):
            x, steps = out[name]
            z = (x.mean(0) - m_ref) / np.sqrt((x.var(0) + v_ref) / draws)
            row[name] = (steps, float(np.sqrt(np.mean(z**2))), float(np.mean(x.var(0)) / np.mean(v_ref)))
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default="0:3", help="system indices a:b (default 0:3)")
    parser.add_argument("--population", default="broad")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--prior", default="highres")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--draws", type=int, default=128, help="denoise draws per setting (accuracy)")
    parser.add_argument("--previous", choices=sorted(PREVIOUSLY), default="denoise",
                        help="the previous default to time against: before the adaptive denoise (10 steps, 30 "
                             "power iterations, Chebyshev degree 24) or before the degree-12 expansion")
    parser.add_argument("--skip-accuracy", action="store_true", help="time the sweeps only")
    args = parser.parse_args()
    a, b = (int(v) for v in args.systems.split(":"))
    systems = lenstronomy_systems()
    prior = load_source_prior(args.prior)
    cost_rows, acc_rows = [], []
    for i in range(a, b):
        folder = args.work / f"system_{i}"
        if not (folder / "obs.fits").exists():
            folder.mkdir(parents=True, exist_ok=True)
            systems.write_system(systems.simulate_system(i, args.population), folder)
        model, start = setup(folder, prior)
        costs = sweep_costs(model, start, prior, args.rounds, args.repeats, PREVIOUSLY[args.previous])
        (t_old, p_old), (t_new, p_new) = costs["previous"], costs["new"]
        cost_rows.append(f"| {i} | {t_old:.3f} | {p_old} | {t_new:.3f} | {p_new} | {t_old / t_new:.2f}x | "
                         f"{p_old / p_new:.1f}x |")
        for row in [] if args.skip_accuracy else denoise_accuracy(model, start, prior, args.draws):
            cells = " | ".join(f"{row[n][0]} | {row[n][1]:.3f} | {row[n][2]:.4f}" for n in ("previous", "new"))
            acc_rows.append(f"| {i} | {row['mult']:g} x ({row['rho']:.4f}) | {cells} |")
        print(f"system {i} done", flush=True)
    print("\n| system | previous: s / sweep | passes / sweep | new: s / sweep | passes / sweep | speed-up | fewer passes |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(cost_rows))
    print("\n| system | rho | previous: steps | rms z | variance ratio | new: steps | rms z | variance ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(acc_rows))


if __name__ == "__main__":
    main()
