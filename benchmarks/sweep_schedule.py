"""How a sweep should split its work between source moves and lens moves (issue 18).

The lens mixes slowly because the source forgets its lens-relevant directions over 3-10 split-Gibbs
moves and the lens moves only within its conditional given the source (docs/performance.md, "Why
the lens mixes slowly"). A sweep's cost is no longer its network passes (1-6 denoise steps per
move) but the move's products with the lensing operator and the lens transition; so the question
is what mix of source moves (``SplitGibbsConfig.num_moves``) and lens transitions
(``GibbsCore.lens_transitions``) per sweep buys the most effective lens samples per second and per
network pass.

On a lenstronomy system with a finished run (its ``.nc`` gives the starts: the last draw of each
chain, lens and source, and the source grid's centre), with the command line's model
(``pipeline.build_kernel``) in the pure core, for each schedule ``K:L`` (``K`` source moves and
``L`` lens transitions per sweep; ``0:L`` holds each chain's source fixed, and its ESS is the sum of
the chains' own, since each chain then has its own target), same keys: ``--warmup`` sweeps that adapt the metric and step
size, then ``--sweeps`` kept sweeps of ``--chains`` chains (``jax.vmap``). Per schedule: seconds
per sweep (all chains, compilation excluded), min bulk ESS over the lens parameters (the grid
placement ``alpha`` is a nuisance and not judged), sweeps, network passes and seconds per effective
sample, max R-hat, and the largest within-chain autocorrelation over the lens parameters at lags 1, 10
and 50 sweeps (less noisy than the ESS when the chains are not much longer than their
autocorrelation time).

Usage:
    python benchmarks/sweep_schedule.py /tmp/ttp/system_0 --schedules 1:1 4:1 1:4 --sweeps 1000
    python benchmarks/sweep_schedule.py WORK/system_019 --from-truth --schedules 1:1 --ncmc 1:1 4:1 --sweeps 200 --warmup 40
(``--ncmc T:c[:cov]`` adds schedule 1:1 with one NCMC lens proposal after each kept sweep,
:func:`blindlens.inference.ncmc_move.ncmc_lens_move`; ``--from-truth`` starts every chain at the
folder's ``truth.npz`` instead of a finished run's last draws.)
Prints a markdown table (recorded in docs/performance.md with the command).
"""

import argparse
import dataclasses
import glob
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import arviz as az
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

from blindlens.inference.gibbs_core import GibbsCore
from blindlens.inference.ncmc_move import ncmc_lens_move
from blindlens.inference.numpyro_model import lens_site_names, nuisance_site_names
from blindlens.io.observation import load_observation
from blindlens.io.simulation import load_truth
from blindlens.pipeline import DEFAULTS, build_kernel, load_lens_model, run_lens_model
from blindlens.source.split_gibbs import SplitGibbsConfig
from blindlens.source_setup import load_source_prior


def _carried(source, alpha_x, alpha_y, pixel_scale):
    """``source`` moved with a placement ``alpha`` that the model drops: ``s(x - alpha)`` (Fourier shift)."""
    ny, nx = source.shape
    fy, fx = np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :]
    phase = np.exp(-2j * np.pi * (fy * alpha_y + fx * alpha_x) / pixel_scale)
    return np.real(np.fft.ifft2(np.fft.fft2(source) * phase)).astype(source.dtype)


def _truth_setup(folder, obs, lens_model, sites, prior, options, chains):
    """Every chain at the true lens (placement 0) and source, the grid centred on the true source."""
    truth = load_truth(folder / "truth.npz")
    if tuple(truth["source"].shape) != tuple(prior.shape) or float(truth["source_pixel_scale"]) != float(prior.pixel_scale):
        raise SystemExit(f"--from-truth needs the true source on the prior's grid {prior.shape} at "
                         f"{prior.pixel_scale}\"; {folder / 'truth.npz'} has {truth['source'].shape} at "
                         f"{float(truth['source_pixel_scale'])}\".")
    center = tuple(float(v) for v in truth["source_center"])
    model = build_kernel(lens_model, obs, prior, options, center=center).joint_model
    values = {}
    for profile in getattr(truth["lens"], "components", (truth["lens"],)):
        values.update({k: float(getattr(profile, k)) for k in sites if hasattr(profile, k)})
    values.update({k: 0.0 for k in sites if k not in values})  # the grid placement
    start = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    source = jnp.asarray(truth["source"], jnp.float32)
    return model, sites, [start] * chains, jnp.stack([source] * chains)


def setup(folder: Path, prior, chains: int, shift: str = "auto", from_truth: bool = False):
    """The CLI's joint model of a finished run's system, and ``chains`` starts from its last draws.

    ``from_truth``: every chain at the true lens and source instead (``truth.npz``; no run needed).

    ``shift="none"`` drops the grid placement (``--source-shift none``); the starting sources are then
    moved by the run's placement, so that they still fit.
    """
    options = dataclasses.replace(DEFAULTS, source_shift=shift)
    obs = load_observation(str(folder / "obs.fits"))
    lens_model = run_lens_model(load_lens_model("sie+shear"), options, obs, prior)
    sites = lens_site_names(lens_model)
    if from_truth:
        return _truth_setup(folder, obs, lens_model, sites, prior, options, chains)
    post = az.from_netcdf(min(glob.glob(str(folder / "*.nc")))).posterior
    center = (float(post["source_x"].values.mean()), float(post["source_y"].values.mean()))
    model = build_kernel(lens_model, obs, prior, options, center=center).joint_model
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    picks = [(c % n_chain, n_draw - 1 - 50 * (c // n_chain)) for c in range(chains)]
    starts = [{s: jnp.asarray(float(post[s].values[c, d]), jnp.float32) for s in sites} for c, d in picks]
    sources = [np.asarray(post["source"].values[c, d]) for c, d in picks]
    if "alpha_x" not in sites and "alpha_x" in post:
        sources = [_carried(s, float(post["alpha_x"].values[c, d]), float(post["alpha_y"].values[c, d]),
                            float(prior.pixel_scale)) for s, (c, d) in zip(sources, picks, strict=True)]
    return model, sites, starts, jnp.stack([jnp.asarray(s) for s in sources])


class _Held:
    """A source "move" that keeps the source (schedule ``0:L``: the lens moves within one conditional)."""

    num_score_evals = 0

    def __call__(self, key, operator, data, noise, current):
        return current


def run_schedule(model, prior, sites, starts, sources, k_src: int, k_lens: int, args, ncmc=None):
    if k_src == 0:
        core = GibbsCore(model.lens_model, None, _Held(), num_warmup=args.warmup, lens_transitions=k_lens)
    else:
        core = GibbsCore.default(model.lens_model, prior, model, split_gibbs=SplitGibbsConfig(num_moves=k_src),
                                 num_warmup=args.warmup, lens_transitions=k_lens)
    keys = jr.split(jr.key(args.seed), len(starts))
    states = [core.init(k, model, v, s) for k, v, s in zip(keys, starts, sources, strict=True)]
    state = jax.tree.map(lambda *x: jnp.stack(x), *states)

    def one(kk, ss, cov, warmup):
        ss, info = core.sweep(kk, ss, model, warmup=warmup, descend=False)
        if ncmc is None or warmup:
            return ss, info, jnp.zeros(())
        cov = ss.inverse_mass if ncmc[2] == "metric" else cov
        r = ncmc_lens_move(jr.fold_in(kk, 7), core, ss.lens, ss.source, model, cov, ncmc[0], ncmc[1])
        ss = ss._replace(lens=r.lens, source=r.source, num_score_evals=ss.num_score_evals + r.num_score_evals)
        return ss, info, r.accept_prob

    def make(warmup):
        def step(k, s, cov):
            return jax.vmap(lambda kk, ss, cc: one(kk, ss, cc, warmup))(jr.split(k, len(starts)), s, cov)
        return jax.jit(step)

    warm, sample = make(True), make(False)
    key = jr.key(args.seed + 1)
    cov = jnp.zeros_like(state.inverse_mass)
    warm_lens = []
    for i in range(args.warmup):
        state, _, _ = warm(jr.fold_in(key, i), state, cov)
        warm_lens.append(state.lens)
    jax.block_until_ready(state)
    if ncmc is not None and ncmc[2] != "metric":
        # the warm-up's second half: each chain's own lens covariance ("emp") or all chains' ("pool"),
        # plus a tenth of the frozen metric so that no direction is left out; frozen for sampling
        half = np.asarray(jnp.stack(warm_lens[len(warm_lens) // 2:], 1), np.float64)  # (chain, draw, d)
        if ncmc[2] == "emp":
            emp = np.stack([np.cov(h, rowvar=False) for h in half])
        else:
            emp = np.broadcast_to(np.cov(half.reshape(-1, half.shape[-1]), rowvar=False), state.inverse_mass.shape)
        cov = jnp.asarray(emp + 0.1 * np.asarray(state.inverse_mass), state.inverse_mass.dtype)
    state, info, acc = sample(jr.fold_in(key, 10**6), state, cov)  # compile (and one kept sweep)
    jax.block_until_ready(state)
    lens, passes0, divergent, accepts = [state.lens], state.num_score_evals, [info.diverging], [acc]
    t0 = time.perf_counter()
    for i in range(1, args.sweeps):
        state, info, acc = sample(jr.fold_in(key, 10**6 + i), state, cov)
        lens.append(state.lens)
        divergent.append(info.diverging)
        accepts.append(acc)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    u = np.asarray(jnp.stack(lens, 1))  # (chain, draw, d)
    values = jax.vmap(jax.vmap(core.lens_values))(jnp.asarray(u))
    judged = [s for s in sites if s not in nuisance_site_names(model.lens_model)]
    if k_src == 0:  # each chain has its own source, hence its own target: per-chain ESS, summed
        ess = {s: float(sum(effective_sample_size(np.asarray(values[s][c:c + 1], np.float64))
                            for c in range(u.shape[0]))) for s in judged}
    else:
        ess = {s: float(effective_sample_size(np.asarray(values[s], np.float64))) for s in judged}
    rhat = {s: float(split_gelman_rubin(np.asarray(values[s], np.float64))) for s in judged}
    worst = min(ess, key=ess.get)
    x = np.stack([np.asarray(values[s], np.float64) for s in judged], -1)  # (chain, draw, param)
    x = x - x.mean(1, keepdims=True)
    var = np.mean(x**2, axis=(0, 1))
    acf = {lag: np.mean(x[:, lag:] * x[:, :-lag], axis=(0, 1)) / var for lag in (1, 10, 50)}
    if args.save:
        np.savez(args.save.with_suffix(f".{k_src}_{k_lens}.npz"), names=np.array(judged), draws=x)
    passes = float(np.sum(np.asarray(state.num_score_evals - passes0)))
    draws = u.shape[0] * u.shape[1]
    return {
        "schedule": f"{k_src}:{k_lens}" + (f" + NCMC T={ncmc[0]}, c={ncmc[1]:g}, {ncmc[2]}" if ncmc else ""),
        "ncmc_accept": float(np.mean(np.asarray(jnp.stack(accepts)))),
        "s_per_sweep": seconds / (args.sweeps - 1),
        "min_ess": ess[worst],
        "worst": worst,
        "sweeps_per_ess": draws / ess[worst],
        "passes_per_ess": passes / ess[worst],
        "seconds_per_ess": seconds / ess[worst],
        "max_rhat": max(rhat.values()),
        "divergent": float(np.mean(np.asarray(jnp.stack(divergent)))),
        "acf": {lag: float(np.max(a)) for lag, a in acf.items()},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("system", type=Path, help="folder with obs.fits and a finished run's .nc")
    parser.add_argument("--schedules", nargs="+", default=["1:1", "4:1", "1:4"],
                        help="K:L = source moves : lens transitions per sweep")
    parser.add_argument("--prior", default="highres")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--sweeps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-truth", action="store_true",
                        help="start every chain at truth.npz's lens and source (grid on the true source), no run needed")
    parser.add_argument("--ncmc", nargs="*", default=[],
                        help="T:c[:cov] specs: also run schedule 1:1 with an NCMC lens move after each kept sweep "
                             "(blindlens.inference.ncmc_move: T path steps, displacement N(0, c^2 C) with C the "
                             "frozen metric (cov 'metric', default), each chain's warm-up lens covariance "
                             "('emp') or all chains' ('pool'))")
    parser.add_argument("--save", type=Path, help="write each schedule's draws to SAVE.K_L.npz")
    parser.add_argument("--source-shift", default="auto", choices=("auto", "sampled", "none"),
                        help="the grid placement, as blindlens sample's option (none: the starts carry it)")
    args = parser.parse_args()
    prior = load_source_prior(args.prior)
    model, sites, starts, sources = setup(args.system, prior, args.chains, args.source_shift, args.from_truth)
    rows = []
    for schedule in args.schedules:
        k_src, k_lens = (int(v) for v in schedule.split(":"))
        row = run_schedule(model, prior, sites, starts, sources, k_src, k_lens, args)
        print(row, flush=True)
        rows.append(row)
    for spec in args.ncmc:
        t, c, *cov = spec.split(":")
        row = run_schedule(model, prior, sites, starts, sources, 1, 1, args,
                           ncmc=(int(t), float(c), cov[0] if cov else "metric"))
        print(row, flush=True)
        rows.append(row)
    print(f"\n{args.system}: {args.chains} chains x {args.sweeps} kept sweeps after {args.warmup} warm-up, "
          f"--source-shift {args.source_shift}\n")
    print("| source moves : lens transitions | s per sweep (all chains) | min bulk ESS (param) | sweeps / ESS | "
          "network passes / ESS | s / ESS | max R-hat | max autocorrelation, lag 1 / 10 / 50 | divergent | "
          "NCMC acceptance |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acf = " / ".join(f"{r['acf'][lag]:.2f}" for lag in (1, 10, 50))
        accept = f"{r['ncmc_accept']:.2f}" if "NCMC" in r["schedule"] else "-"
        print(f"| {r['schedule']} | {r['s_per_sweep']:.3f} | {r['min_ess']:.1f} ({r['worst']}) | "
              f"{r['sweeps_per_ess']:.0f} | {r['passes_per_ess']:.0f} | {r['seconds_per_ess']:.1f} | "
              f"{r['max_rhat']:.3f} | {acf} | {r['divergent']:.3f} | {accept} |")


if __name__ == "__main__":
    main()
