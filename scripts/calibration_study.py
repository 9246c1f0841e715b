"""Calibration of blind joint inference (issue 5): lens posteriors over simulated systems.

Each system: SIE + shear lens parameters drawn from the study's priors (those of the NumPyro
model the sampler is given), a held-out procedural galaxy (seed-2 set, never trained on) binned
to the prior's 32x32 grid at 0.1"/pixel as the source, a 72x72 image at 0.05"/pixel, Gaussian
PSF (FWHM 0.1"), noise sigma = peak / SNR. ``BlindLensGibbs`` (NUTS on the lens, guided
reverse-SDE source step) runs one chain started at the true lens.

Starting at the truth is what simulation-based calibration allows: ``(theta_true, s_true)`` is an
exact draw of the joint posterior given ``y`` (the data were simulated from it), so a correct
sampler started there stays in stationarity, and any miscalibration measured is the sampler's,
not burn-in's. (Finding the posterior from a cold start is a separate problem, see
docs/joint_inference.md.)

Per system and guidance it records the lens draws, split R-hat and bulk ESS per parameter,
per-draw residual chi^2/N, network evaluations and wall time, appending one JSON line per run to
``<out>/<tag>.jsonl`` (a rerun skips finished runs: resumable). ``--report`` then writes
``<out>/<tag>_tables.md`` and ``<out>/<tag>_coverage.png``: per-parameter bias in posterior sd (mean z), coverage of
the 68/95% intervals against binomial bands, TARP on the lens parameters, chi^2/N, and cost per
effective sample (network evaluations / min bulk ESS).

    python scripts/calibration_study.py --heldout training_data/heldout.npy --systems 30 \
        --guidance pigdm,cla --max-minutes 60
    python scripts/calibration_study.py --heldout training_data/heldout.npy --report
"""

import argparse
import functools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402

from blindlens.arviz_conversion import residual_chi2, to_inference_data  # noqa: E402
from blindlens.gibbs_kernel import (  # noqa: E402
    BlindLensGibbs,
    GibbsDDRMConfig,
    lens_unconstrained,
    sample_gibbsddrm,
)
from blindlens.diffusion_sde import sample_reverse_diffusion  # noqa: E402
from blindlens.image_sets import bin_images, load_image_set  # noqa: E402
from blindlens.likelihood_score import CLA, PiGDM  # noqa: E402
from blindlens.numpyro_model import SIE_SHEAR_SITES, lens_from_values, sie_shear  # noqa: E402
from blindlens.score_prior import ScorePrior  # noqa: E402
from blindlens.simulation import simulate_observation  # noqa: E402
from blindlens.source_posterior import SourceSamplerConfig  # noqa: E402
from blindlens.validation import tarp_coverage  # noqa: E402

GUIDANCE = {"pigdm": PiGDM, "cla": CLA}
NETWORK_PASSES = {  # network passes per prior-score evaluation, by guidance
    "pigdm": "PiGDM adds a VJP to each, i.e. twice as many network passes",
    "cla": "CLA adds no network pass: its implicit IMEX step costs lensing-operator products only",
}
STUDY_PRIORS = {
    "theta_E": dist.Uniform(0.8, 1.4),
    "e1": dist.TruncatedNormal(0.0, 0.1, low=-0.3, high=0.3),
    "e2": dist.TruncatedNormal(0.0, 0.1, low=-0.3, high=0.3),
    "center_x": dist.Normal(0.0, 0.05),
    "center_y": dist.Normal(0.0, 0.05),
    "gamma1": dist.Normal(0.0, 0.03),
    "gamma2": dist.Normal(0.0, 0.03),
}
lens_model = functools.partial(sie_shear, priors=STUDY_PRIORS)


def draw_truth(key):
    trace = handlers.trace(handlers.seed(lens_model, key)).get_trace()
    return {n: float(trace[n]["value"]) for n in SIE_SHEAR_SITES}


def prior_source(i, prior):
    """A source drawn from the learned prior itself (500-step reverse SDE, Tweedie-denoised)."""
    draw = sample_reverse_diffusion(jr.key(30_000 + i), prior.sde, lambda x, t, args: prior.score(x, t), prior.shape,
                                    num_steps=500)
    return np.asarray(draw, np.float32)


def simulate(i, heldout, prior, snr, source_kind="heldout"):
    truth = draw_truth(jr.key(10_000 + i))
    source = heldout[i].astype(np.float32) if source_kind == "heldout" else prior_source(i, prior)
    noise = float(source.max() / snr)
    obs, _ = simulate_observation(
        lens_from_values(lens_model, truth), source, float(prior.pixel_scale), key=jr.key(20_000 + i),
        image_shape=(72, 72), pixel_scale=0.05, psf_fwhm=0.1, noise_sigma=noise, supersampling=2,
    )
    return truth, source, obs


def run_one(i, name, heldout, prior, args):
    t_start = time.time()
    truth, source, obs = simulate(i, heldout, prior, args.snr, args.source)
    kernel = BlindLensGibbs(
        lens_model, obs, prior,
        source_config=SourceSamplerConfig(guidance=GUIDANCE[name](), num_steps=args.steps),
        warm_start=None, supersampling=2, source_refresh_sigma=args.refresh_sigma,
        target_accept_prob=0.8, max_tree_depth=args.tree_depth,
    )
    init = {**lens_unconstrained(lens_model, {n: jnp.asarray(v) for n, v in truth.items()}), "source": jnp.asarray(source)}
    mcmc = MCMC(kernel, num_warmup=args.warmup, num_samples=args.draws, num_chains=1, progress_bar=False)
    t0 = time.time()
    mcmc.run(jr.key(i), init_params=init, extra_fields=("num_score_evals", "num_steps", "diverging"))
    jax.block_until_ready(mcmc.get_samples())  # JAX dispatches asynchronously
    seconds = time.time() - t0
    t1 = time.time()
    idata = to_inference_data(mcmc, obs)
    print(f"  (system {i}: simulate+build {t0 - t_start:.0f} s, run {seconds:.0f} s, InferenceData {time.time() - t1:.0f} s)",
          flush=True)
    post = idata.posterior
    draws = {n: post[n].values.reshape(-1).tolist() for n in SIE_SHEAR_SITES}
    def halves(v):  # one chain: split-R-hat needs >= 2 chains, so compare its two halves
        v = v.reshape(-1)
        return v[: v.size // 2 * 2].reshape(2, -1)

    rhat = {n: float(az.rhat(halves(post[n].values))) for n in SIE_SHEAR_SITES}
    ess = {n: float(az.ess(post[n].values.reshape(1, -1))) for n in SIE_SHEAR_SITES}
    evals = np.asarray(mcmc.get_extra_fields()["num_score_evals"])
    chi2 = residual_chi2(idata).reshape(-1)
    return {
        "system": i, "guidance": name, "truth": truth, "draws": draws, "rhat": rhat, "ess": ess,
        "chi2": chi2.tolist(), "num_pixels": int(obs.image.size), "seconds": seconds,
        "score_evals": float(evals[-1]), "divergences": int(np.sum(mcmc.get_extra_fields()["diverging"])),
        "settings": {k: getattr(args, k) for k in ("steps", "warmup", "draws", "tree_depth", "snr", "refresh_sigma", "lens_metric", "source")},
    }


def run_continuous_time(i, name, heldout, prior, args):
    """``args.draws`` independent continuous-time GibbsDDRM trajectories (each from its own prior
    draw of the lens: a cold start, as the sampler is meant to be used); one joint draw each."""
    truth, source, obs = simulate(i, heldout, prior, args.snr, args.source)
    jm = BlindLensGibbs(lens_model, obs, prior, warm_start=None, supersampling=2).joint_model
    config = GibbsDDRMConfig(guidance=GUIDANCE[name](), num_steps=args.steps)
    n_pix = int(np.sum(np.asarray(jm.mask)))

    @jax.jit
    def run(keys):
        res = jax.lax.map(lambda k: sample_gibbsddrm(k, jm, prior, config), keys)

        def chi2(values, s):
            model = jm.operator(lens_from_values(lens_model, values), masked=False)(s)
            return jnp.sum(jnp.where(jm.mask, ((jm.image - model) / jm.noise) ** 2, 0.0)) / n_pix

        return res.lens, jax.vmap(chi2)(res.lens, res.source), res.accept_rate

    t0 = time.time()
    lens, chi2, accept = jax.block_until_ready(run(jr.split(jr.key(i), args.draws)))
    seconds = time.time() - t0
    draws = {n: np.asarray(lens[n]).reshape(-1) for n in SIE_SHEAR_SITES}

    def halves(v):
        return v[: v.size // 2 * 2].reshape(2, -1)

    return {
        "system": i, "guidance": f"continuous-time {name}", "truth": truth,
        "draws": {n: v.tolist() for n, v in draws.items()},
        "rhat": {n: float(az.rhat(halves(v))) for n, v in draws.items()},
        "ess": {n: float(az.ess(v.reshape(1, -1))) for n, v in draws.items()},
        "chi2": np.asarray(chi2).tolist(), "num_pixels": n_pix, "seconds": seconds,
        "score_evals": float(config.num_score_evals * args.draws), "divergences": 0,
        "mala_accept": float(np.mean(accept)),
        "settings": {"sampler": "continuous-time", **{k: getattr(args, k) for k in ("steps", "draws", "snr", "source")}},
    }


def plot_coverage(curves, path: Path):
    """Per guidance: empirical coverage of central credible intervals for each lens parameter
    against the nominal level (binomial 95% band for n systems), and the TARP expected coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), 2, figsize=(9, 4.2 * len(curves)), squeeze=False)
    for row, (name, (levels, cover, alpha, ecp, n)) in zip(axes, curves.items()):
        band = 1.96 * np.sqrt(levels * (1 - levels) / n)
        row[0].fill_between(levels, np.clip(levels - band, 0, 1), np.clip(levels + band, 0, 1), color="0.85", label=f"binomial 95% (n={n})")
        for j, p in enumerate(SIE_SHEAR_SITES):
            row[0].plot(levels, cover[:, j], lw=1.2, label=p)
        row[0].plot([0, 1], [0, 1], "k--", lw=0.8)
        row[0].set(xlabel="credible level of the central interval", ylabel="fraction of truths inside",
                   title=f"{name}: interval coverage")
        row[0].legend(fontsize=7, loc="upper left")
        band = 1.96 * np.sqrt(alpha * (1 - alpha) / n)
        row[1].fill_between(alpha, np.clip(alpha - band, 0, 1), np.clip(alpha + band, 0, 1), color="0.85")
        row[1].plot(alpha, ecp, "C3", lw=1.5)
        row[1].plot([0, 1], [0, 1], "k--", lw=0.8)
        row[1].set(xlabel="credibility level", ylabel="expected coverage", title=f"{name}: TARP (7 lens parameters)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stacked(rs):
    """Draws ``(runs, params, draws)``, truths ``(runs, params)``, z-scores of the truth in posterior
    sd, and whether each truth lies inside its central 68% and 95% intervals."""
    draws = np.array([[r["draws"][p] for p in SIE_SHEAR_SITES] for r in rs])
    truth = np.array([[r["truth"][p] for p in SIE_SHEAR_SITES] for r in rs])
    z = (draws.mean(-1) - truth) / draws.std(-1, ddof=1)
    lo68, hi68, lo95, hi95 = np.percentile(draws, [16, 84, 2.5, 97.5], axis=-1)
    return draws, truth, z, (truth >= lo68) & (truth <= hi68), (truth >= lo95) & (truth <= hi95)


def paired_comparison(rows) -> list[str]:
    """One line per guidance over the systems that every guidance ran (a paired comparison)."""
    names = sorted({r["guidance"] for r in rows})
    common = set.intersection(*({r["system"] for r in rows if r["guidance"] == g} for g in names))
    if len(names) < 2 or not common:
        return []
    n, d = len(common), len(SIE_SHEAR_SITES)
    lines = [
        f"## Paired comparison on the {n} systems run with every guidance", "",
        f"| guidance | sd of z (all {d} parameters) | 68% coverage (0.68 +- {np.sqrt(0.68 * 0.32 / (n * d)):.2f}) "
        f"| 95% coverage (0.95 +- {np.sqrt(0.95 * 0.05 / (n * d)):.2f}) | residual chi^2/N | median min bulk ESS "
        "| score evals / ESS (median) | s / run (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in names:
        rs = sorted((r for r in rows if r["guidance"] == g and r["system"] in common), key=lambda r: r["system"])
        _, _, z, in68, in95 = stacked(rs)
        ess_min = np.array([min(r["ess"].values()) for r in rs])
        evals = np.array([r["score_evals"] for r in rs])
        lines.append(
            f"| {g} | {z.std(ddof=1):.2f} | {np.mean(in68):.2f} | {np.mean(in95):.2f} | {np.mean(np.concatenate([r['chi2'] for r in rs])):.3f} "
            f"| {np.median(ess_min):.1f} | {np.median(evals / np.maximum(ess_min, 1e-9)):.0f} "
            f"| {np.median([r['seconds'] for r in rs]):.0f} |"
        )
    return lines + ["", "(Coverage bands treat the n x 7 intervals as independent, which they are not quite.)", ""]


def report(path: Path, out: Path, tag: str):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [f"# Calibration study: {len(rows)} runs from `{path.name}`", ""]
    curves = {}
    for name in sorted({r["guidance"] for r in rows}):
        rs = sorted((r for r in rows if r["guidance"] == name), key=lambda r: r["system"])
        n = len(rs)
        draws, truth, z, in68, in95 = stacked(rs)
        c68, c95 = in68.mean(0), in95.mean(0)
        rng = np.random.default_rng(0)
        lo, hi = truth.min(0), truth.max(0)
        refs = lo + (hi - lo) * rng.uniform(size=truth.shape)
        scale = truth.std(0)
        alpha, ecp, atc = tarp_coverage(np.transpose(draws, (0, 2, 1)) / scale, truth / scale, refs / scale)
        levels = np.linspace(0.0, 1.0, 21)
        lo, hi = np.percentile(draws, 50 * (1 - levels), axis=-1), np.percentile(draws, 50 * (1 + levels), axis=-1)
        curves[name] = (levels, np.mean((truth >= lo) & (truth <= hi), axis=1), alpha, ecp, n)
        ess_min = np.array([min(r["ess"].values()) for r in rs])
        rhat_max = np.array([max(r["rhat"].values()) for r in rs])
        chi2 = np.concatenate([r["chi2"] for r in rs])
        evals = np.array([r["score_evals"] for r in rs])
        secs = np.array([r["seconds"] for r in rs])
        b68, b95 = np.sqrt(0.68 * 0.32 / n), np.sqrt(0.95 * 0.05 / n)
        lines += [
            f"## {name} ({n} systems; settings {rs[0]['settings']})", "",
            f"| parameter | mean z (bias / sd) | sd of z | 68% coverage (0.68 +- {b68:.2f}) | 95% coverage (0.95 +- {b95:.2f}) | median bulk ESS | max R-hat |",
            "|---|---|---|---|---|---|---|",
        ]
        for j, p in enumerate(SIE_SHEAR_SITES):
            lines.append(f"| {p} | {z[:, j].mean():+.2f} +- {z[:, j].std(ddof=1) / np.sqrt(n):.2f} | {z[:, j].std(ddof=1):.2f} "
                         f"| {c68[j]:.2f} | {c95[j]:.2f} | {np.median([r['ess'][p] for r in rs]):.0f} "
                         f"| {max(r['rhat'][p] for r in rs):.2f} |")
        lines += [
            "",
            f"* TARP ATC on the 7 lens parameters: {atc:+.3f} (0 calibrated; negative overconfident)",
            f"* residual chi^2/N per draw: mean {chi2.mean():.3f}, sd {chi2.std():.3f} (chi^2_N/N: 1 +- "
            f"{np.sqrt(2 / rs[0]['num_pixels']):.3f})",
            f"* convergence: max R-hat median {np.median(rhat_max):.2f}, min bulk ESS median {np.median(ess_min):.1f}",
            f"* cost: {np.median(evals / np.maximum(ess_min, 1e-9)):.0f} prior-score evaluations per effective sample "
            f"(warm-up included; median over systems, min-ESS parameter; {NETWORK_PASSES.get(name.split()[-1], '')}); {np.median(secs / np.maximum(ess_min, 1e-9)):.0f} s per "
            f"effective sample on this CPU; {np.median(secs):.0f} s per run",
            "",
        ]
    lines += paired_comparison(rows)
    out.mkdir(parents=True, exist_ok=True)
    plot_coverage(curves, out / f"{tag}_coverage.png")
    lines += [f"Figure: `{tag}_coverage.png` (coverage of central intervals per parameter, and TARP).", ""]
    (out / f"{tag}_tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", required=True, help="held-out galaxies (N, 64, 64) at 0.05\"/pixel")
    parser.add_argument("--systems", type=int, default=30)
    parser.add_argument("--first", type=int, default=0, help="index of the first system")
    parser.add_argument("--guidance", default="pigdm,cla")
    parser.add_argument("--sampler", choices=("gibbs", "continuous-time"), default="gibbs",
                        help="BlindLensGibbs chains, or independent continuous-time GibbsDDRM trajectories "
                             "(--draws of them per system, cold starts from the lens prior)")
    parser.add_argument("--steps", type=int, default=50, help="reverse-SDE steps per source draw")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--tree-depth", type=int, default=6)
    parser.add_argument("--lens-metric", choices=("curvature",), default="curvature",
                        help="NUTS metric of the lens move: the curvature metric (the identity-metric runs of "
                             "docs/calibration were made with the NumPyro Gibbs kernel before 2026-12-06)")
    parser.add_argument("--refresh-sigma", type=float, default=None,
                        help="partial source refresh from this noise level each sweep (default: full draws)")
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--source", choices=("heldout", "prior"), default="heldout",
                        help="held-out galaxies, or sources drawn from the learned prior itself (then the "
                             "source prior is exactly right, isolating the sampler's own error)")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--tag", default="calibration")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no new run after this")
    parser.add_argument("--report", action="store_true", help="only write the tables from the JSONL")
    args = parser.parse_args()
    path = args.out / f"{args.tag}.jsonl"
    if args.report:
        report(path, args.out, args.tag)
        return
    began = time.time()
    prior = ScorePrior.default()
    heldout = load_image_set(args.heldout)
    b = heldout.shape[1] // prior.shape[0]
    heldout = bin_images(heldout, b)
    done = set()
    if path.exists():
        done = {(r["system"], r["guidance"]) for r in map(json.loads, path.read_text().splitlines()) if r}
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.first, args.first + args.systems):
        for name in args.guidance.split(","):
            if (i, name if args.sampler == "gibbs" else f"continuous-time {name}") in done:
                continue
            if args.max_minutes is not None and time.time() - began > 60 * args.max_minutes:
                print("time budget spent", flush=True)
                return
            row = (run_one if args.sampler == "gibbs" else run_continuous_time)(i, name, heldout, prior, args)
            jax.clear_caches()  # every compiled executable keeps memory maps; 30 systems of them crash LLVM
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"system {i} {name}: {row['seconds']:.0f} s, min ESS {min(row['ess'].values()):.1f}, max R-hat "
                  f"{max(row['rhat'].values()):.2f}, chi2/N {np.mean(row['chi2']):.3f}, theta_E "
                  f"{np.mean(row['draws']['theta_E']):.4f} +- {np.std(row['draws']['theta_E']):.4f} "
                  f"(truth {row['truth']['theta_E']:.4f})", flush=True)


if __name__ == "__main__":
    main()
