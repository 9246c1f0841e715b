"""Fixed-lens source posteriors with the shipped prior: chi^2 identity, coverage, TARP and cost.

Data-and-validation.md §B.1(3) and §B.3: simulated lenses of held-out procedural galaxies (seed 2,
never used for training), binned to the prior's 32x32 grid at 0.1"/pixel so that the truth is
exactly representable, observed through the same lensing operator used for inference (SIE +
external shear, Gaussian PSF, supersampling 2) with Gaussian noise. For every system and every
likelihood score:

* residual chi^2 of each posterior sample, ||(y - A s)/sigma||^2, which follows chi^2_N for exact
  posterior samples (N = image pixels), and the posterior mean's chi^2 (which must sit below N);
* per-pixel coverage of the true source by the samples' central 68% and 95% intervals, and the
  z-scores (truth - mean) / sd;
* TARP (Lemos et al. 2023) on source summaries (flux, centroid x/y, half-light radius);
* cost: network passes and seconds per sample.

Run (CPU, writes docs/trained_prior_study.md, .json and docs/figures/trained_prior_*.png):

    JAX_PLATFORMS=cpu python scripts/trained_prior_study.py --heldout training_data/heldout.npy

``--methods pigdm:200,cla:1000`` picks likelihood scores and Euler step counts (``smc16:50``: twisted
SMC with PiGDM twists and 16 particles, one weighted draw per run, blindlens.twisted_smc);
``--step-curve`` adds PiGDM's accuracy-cost curve over step counts on the first systems.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from blindlens.grid import PixelGrid  # noqa: E402
from blindlens.image_sets import load_image_set  # noqa: E402
from blindlens.lens_models import SIE, ExternalShear  # noqa: E402
from blindlens.lensing_operator import LensingOperator  # noqa: E402
from blindlens.likelihood_score import CLA, CalibratedTweedie, PiGDM  # noqa: E402
from blindlens.morphology import morphology_summaries  # noqa: E402
from blindlens.psf import gaussian_psf  # noqa: E402
from blindlens.score_prior import ScorePrior  # noqa: E402
from blindlens.source_posterior import SourceSamplerConfig, sample_source_posterior  # noqa: E402
from blindlens.twisted_smc import TwistedSMCConfig, sample_source_posterior_smc  # noqa: E402
from blindlens.validation import tarp_coverage  # noqa: E402

GUIDANCE = {"cla": CLA, "pigdm": PiGDM, "calibrated": CalibratedTweedie}
SUMMARIES = ("flux", "centroid_x", "centroid_y", "half_light_radius")


def draw_lens(rng):
    """SIE + shear parameters for one system (arcsec; lenstronomy conventions)."""
    p = {
        "theta_E": rng.uniform(0.8, 1.4),
        "e1": np.clip(rng.normal(0, 0.1), -0.3, 0.3),
        "e2": np.clip(rng.normal(0, 0.1), -0.3, 0.3),
        "center_x": rng.normal(0, 0.05),
        "center_y": rng.normal(0, 0.05),
        "gamma1": rng.normal(0, 0.03),
        "gamma2": rng.normal(0, 0.03),
    }
    lens = SIE(p["theta_E"], p["e1"], p["e2"], p["center_x"], p["center_y"]) + ExternalShear(p["gamma1"], p["gamma2"])
    return p, lens


@eqx.filter_jit
def _passes_over_time(guidance, prior, op, data, noise, truth, ts):
    problem = guidance.prepare(prior, op, data, noise)
    return jax.vmap(lambda t: guidance.network_passes(truth + prior.sde.sigma(t) * 0.5, t, problem))(ts)


def passes_per_sample(guidance, prior, op, data, noise, truth, steps):
    """Network passes of one draw: the guidance's per-step count averaged over the time grid, x steps."""
    ts = jnp.linspace(1.0, 1e-3, 9)
    per = _passes_over_time(guidance, prior, op, jnp.asarray(data), jnp.asarray(noise), jnp.asarray(truth), ts)
    return float(np.mean(np.asarray(per))) * steps + 1.0  # + the final denoise


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", required=True, help="held-out galaxies (N, 64, 64) at 0.05\"/pixel")
    parser.add_argument("--prior", default=None, help="prior file (default: the shipped prior)")
    parser.add_argument("--systems", type=int, default=20)
    parser.add_argument("--samples", type=int, default=32, help="posterior samples per system")
    parser.add_argument("--methods", default="pigdm:200,cla:1000",
                        help="name:steps[:systems], comma-separated; name@K caps CG at K iterations (pigdm@30)")
    parser.add_argument("--snr", type=float, default=20.0, help="peak source brightness / noise sigma")
    parser.add_argument("--image-size", type=int, default=72)
    parser.add_argument("--pixel-scale", type=float, default=0.05)
    parser.add_argument("--step-curve", default="", help="PiGDM step counts for the cost curve, e.g. 25,50,100,200,400")
    parser.add_argument("--curve-systems", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--tag", default="trained_prior")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new system after this; report what finished")
    args = parser.parse_args()

    began = time.time()
    prior = ScorePrior.load(args.prior) if args.prior else ScorePrior.default()
    heldout = load_image_set(args.heldout)
    b = heldout.shape[1] // prior.shape[0]
    heldout = heldout.reshape(len(heldout), prior.shape[0], b, prior.shape[1], b).mean(axis=(2, 4))
    rng = np.random.default_rng(args.seed)
    image_grid = PixelGrid((args.image_size, args.image_size), args.pixel_scale)
    source_grid = PixelGrid(tuple(prior.shape), float(prior.pixel_scale))
    psf = gaussian_psf(2 * args.pixel_scale, args.pixel_scale)
    n_pix = args.image_size**2

    systems = []
    for i in range(args.systems):
        params, lens = draw_lens(rng)
        truth = heldout[i].astype(np.float32)
        op = LensingOperator(lens, image_grid, source_grid, psf=psf, supersampling=2)
        noise = float(truth.max() / args.snr)
        clean = np.asarray(op(jnp.asarray(truth)))
        data = clean + noise * rng.normal(size=clean.shape)
        systems.append({"params": params, "truth": truth, "op": op, "noise": noise, "data": data.astype(np.float32)})
    print(f"{len(systems)} systems simulated ({time.time() - began:.0f} s)", flush=True)

    def run(name, steps, subset, key_offset):
        base, _, cg_cap = name.partition("@")  # "pigdm@30": PiGDM with at most 30 CG iterations
        particles = int(base[3:]) if base.startswith("smc") else 0  # "smc16": twisted SMC, 16 particles
        guidance_name = "pigdm" if particles else base
        guidance = GUIDANCE[guidance_name](cg_maxiter=int(cg_cap)) if cg_cap else GUIDANCE[guidance_name]()
        if particles:
            smc_config = TwistedSMCConfig(guidance=guidance, num_particles=particles, num_steps=steps)
            smc_runs = []

            def draw(key, s):  # one particle per SMC run, drawn by its weight
                out, res = sample_source_posterior_smc(key, prior, s["op"], s["data"], s["noise"], args.samples,
                                                       smc_config)
                smc_runs.append(res)
                return out
        else:
            config = SourceSamplerConfig(guidance=guidance, num_steps=steps)

            def draw(key, s):
                return sample_source_posterior(key, prior, s["op"], s["data"], s["noise"], num_samples=args.samples,
                                               config=config)
        rows = []
        s = subset[0]  # compile once outside the timings
        jax.block_until_ready(draw(jr.key(0), s))
        for i, s in enumerate(subset):
            if args.max_minutes is not None and time.time() - began > 60 * args.max_minutes:
                print(f"  {name}:{steps}: time budget spent, stopping after {i} systems", flush=True)
                break
            t0 = time.time()
            samples = np.asarray(jax.block_until_ready(draw(jr.key(key_offset + i), s)))
            seconds = time.time() - t0
            if not np.all(np.isfinite(samples)):
                rows.append({"finite": False, "seconds": seconds})
                print(f"  {name}:{steps} system {i}: non-finite samples", flush=True)
                continue
            model = np.asarray(jax.vmap(s["op"])(jnp.asarray(samples)))
            chi2 = np.sum((s["data"] - model) ** 2, axis=(1, 2)) / s["noise"] ** 2
            mean = samples.mean(0)
            chi2_mean = float(np.sum((s["data"] - np.asarray(s["op"](jnp.asarray(mean)))) ** 2) / s["noise"] ** 2)
            sd = samples.std(0, ddof=1)
            z = (s["truth"] - mean) / np.maximum(sd, 1e-12)
            lo68, hi68, lo95, hi95 = np.percentile(samples, [16, 84, 2.5, 97.5], axis=0)
            bright = s["truth"] > 0.1 * s["truth"].max()  # the galaxy, not the empty background
            summ = morphology_summaries(samples, prior.pixel_scale)
            summ_true = morphology_summaries(s["truth"], prior.pixel_scale)
            rows.append({
                "finite": True, "seconds": seconds, "chi2": chi2.tolist(), "chi2_mean": chi2_mean,
                "cover68": float(np.mean((s["truth"] >= lo68) & (s["truth"] <= hi68))),
                "cover95": float(np.mean((s["truth"] >= lo95) & (s["truth"] <= hi95))),
                "cover68_bright": float(np.mean(((s["truth"] >= lo68) & (s["truth"] <= hi68))[bright])),
                "cover95_bright": float(np.mean(((s["truth"] >= lo95) & (s["truth"] <= hi95))[bright])),
                "z": z.ravel().tolist(), "z_bright": z[bright].tolist(),
                "summaries": np.stack([summ[k] for k in SUMMARIES], 1).tolist(),
                "summaries_true": [float(summ_true[k][0]) for k in SUMMARIES],
                "passes": max(particles, 1) * passes_per_sample(guidance, prior, s["op"], s["data"], s["noise"],
                                                                s["truth"], steps),
            })
            if particles:
                res = smc_runs[-1]
                rows[-1]["smc_final_ess"] = float(np.mean(res.final_ess))
                rows[-1]["smc_resamples"] = float(np.mean(np.sum(np.asarray(res.resampled), axis=1)))
                rows[-1]["smc_min_ess"] = float(np.mean(np.min(np.asarray(res.ess), axis=1)))
            smc_note = (f", SMC final ESS {rows[-1]['smc_final_ess']:.1f}/{particles}, min ESS "
                        f"{rows[-1]['smc_min_ess']:.1f}, {rows[-1]['smc_resamples']:.0f} resamplings") if particles else ""
            print(f"  {name}:{steps} system {i}: chi2/N {np.mean(chi2) / n_pix:.3f} (mean image {chi2_mean / n_pix:.3f}), "
                  f"cover68 {rows[-1]['cover68']:.2f}, {seconds:.1f} s{smc_note}", flush=True)
        return rows

    results = {}
    for spec in args.methods.split(","):
        name, steps, *count = spec.split(":")  # name:steps[:number of systems]
        subset = systems[: int(count[0])] if count else systems
        results[f"{name}:{steps}"] = run(name, int(steps), subset, 10_000)
    curve = {}
    if args.step_curve:
        for steps in (int(x) for x in args.step_curve.split(",")):
            curve[steps] = run("pigdm", steps, systems[: args.curve_systems], 20_000)

    # TARP references: uniform in the box spanned by the true summaries (normalised per summary)
    truths_all = np.array([r["summaries_true"] for r in next(iter(results.values())) if r["finite"]])
    scale = truths_all.std(0)

    def aggregate(rows):
        ok = [r for r in rows if r["finite"]]
        if not ok:
            return {"finite_systems": 0, "systems": len(rows)}
        chi2 = np.concatenate([r["chi2"] for r in ok])
        first = np.array([r["chi2"][0] for r in ok])
        z = np.concatenate([r["z"] for r in ok])
        zb = np.concatenate([r["z_bright"] for r in ok])
        smp = np.array([r["summaries"] for r in ok]) / scale
        tru = np.array([r["summaries_true"] for r in ok]) / scale
        lo, hi = tru.min(0), tru.max(0)
        # the same references for every method (fresh generator), so their ATCs are comparable
        refs = lo + (hi - lo) * np.random.default_rng(args.seed + 1).uniform(size=tru.shape)
        alpha, ecp, atc = tarp_coverage(smp, tru, refs)
        return {
            "systems": len(rows), "finite_systems": len(ok),
            "chi2_over_N": float(np.mean(chi2) / n_pix),
            "chi2_over_N_se": float(np.std(chi2) / np.sqrt(len(chi2)) / n_pix),
            "ks_p_all": float(stats.kstest(chi2, stats.chi2(n_pix).cdf).pvalue),
            "ks_p_one_per_system": float(stats.kstest(first, stats.chi2(n_pix).cdf).pvalue),
            "chi2_mean_image_over_N": float(np.mean([r["chi2_mean"] for r in ok]) / n_pix),
            "cover68": float(np.mean([r["cover68"] for r in ok])),
            "cover95": float(np.mean([r["cover95"] for r in ok])),
            "z_mean": float(np.mean(z)), "z_sd": float(np.std(z)),
            "cover68_bright": float(np.mean([r["cover68_bright"] for r in ok])),
            "cover95_bright": float(np.mean([r["cover95_bright"] for r in ok])),
            "z_bright_mean": float(np.mean(zb)), "z_bright_sd": float(np.std(zb)),
            "tarp_atc": atc, "tarp_alpha": alpha.tolist(), "tarp_ecp": ecp.tolist(),
            "passes_per_sample": float(np.mean([r["passes"] for r in ok])),
            **({k: float(np.mean([r[k] for r in ok])) for k in ("smc_final_ess", "smc_min_ess", "smc_resamples")}
               if "smc_final_ess" in ok[0] else {}),
            "seconds_per_sample": float(np.mean([r["seconds"] for r in ok]) / args.samples),
            "chi2_all": chi2.tolist(),
        }

    summary = {k: aggregate(v) for k, v in results.items()}
    curve_summary = {s: aggregate(v) for s, v in curve.items()}
    elapsed = time.time() - began
    meta = {"systems": args.systems, "samples": args.samples, "snr": args.snr, "image": [args.image_size, args.pixel_scale],
            "N": n_pix, "device": str(jax.devices()[0].device_kind), "elapsed_s": elapsed,
            "lenses": [s["params"] for s in systems], "noise": [s["noise"] for s in systems]}
    args.out.mkdir(parents=True, exist_ok=True)
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "chi2_all"} for k, v in summary.items()}
    slim_curve = {str(k): {kk: vv for kk, vv in v.items() if kk not in ("chi2_all", "tarp_alpha", "tarp_ecp")}
                  for k, v in curve_summary.items()}
    (args.out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "methods": slim, "step_curve": slim_curve},
                                                          indent=1, default=float))
    figures(summary, curve_summary, n_pix, args.out / "figures", args.tag)
    lines = table(summary, curve_summary, meta)
    (args.out / f"{args.tag}_tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def calibrated_reference(num_samples, draws=200_000, seed=0):
    """Coverage of the sample 16-84% / 2.5-97.5% intervals and sd of z = (truth - mean) / sd that an
    exact sampler gives with ``num_samples`` samples (truth exchangeable with the samples)."""
    x = np.random.default_rng(seed).normal(size=(draws, num_samples + 1))
    t, s = x[:, 0], x[:, 1:]
    lo, hi, l95, h95 = np.percentile(s, [16, 84, 2.5, 97.5], axis=1)
    z = (t - s.mean(1)) / s.std(1, ddof=1)
    return float(np.mean((t >= lo) & (t <= hi))), float(np.mean((t >= l95) & (t <= h95))), float(z.std())


def table(summary, curve, meta):
    lines = [f"{meta['systems']} systems x {meta['samples']} samples, N = {meta['N']} image pixels, "
             f"peak SNR {meta['snr']:g}, {meta['device']}, {meta['elapsed_s'] / 60:.1f} min", "",
             "| likelihood score:Euler steps | finite systems | sample chi²/N (± se) | KS p (all / one per system) | "
             "posterior-mean chi²/N | pixel coverage 68% / 95% | z mean / sd | galaxy pixels: coverage 68% / 95%, z sd | "
             "TARP ATC | network passes / sample | s / sample |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    c68, c95, zsd = calibrated_reference(meta["samples"])
    lines.append(f"| *exact sampler, {meta['samples']} samples* | | *1 ± {np.sqrt(2 / meta['N']):.4f} per sample* | | "
                 f"*< 1* | *{c68:.3f} / {c95:.3f}* | *0 / {zsd:.3f}* | *{c68:.3f} / {c95:.3f}, {zsd:.3f}* | *0* | | |")
    for k, v in summary.items():
        if not v.get("finite_systems"):
            lines.append(f"| {k} | 0/{v['systems']} | non-finite | | | | | | | | |")
            continue
        lines.append(
            f"| {k} | {v['finite_systems']}/{v['systems']} | {v['chi2_over_N']:.3f} ± {v['chi2_over_N_se']:.3f} | "
            f"{v['ks_p_all']:.2g} / {v['ks_p_one_per_system']:.2g} | {v['chi2_mean_image_over_N']:.3f} | "
            f"{v['cover68']:.3f} / {v['cover95']:.3f} | {v['z_mean']:+.3f} / {v['z_sd']:.3f} | "
            f"{v['cover68_bright']:.3f} / {v['cover95_bright']:.3f}, {v['z_bright_sd']:.3f} | {v['tarp_atc']:+.3f} | "
            f"{v['passes_per_sample']:.0f} | {v['seconds_per_sample']:.3f} |")
    if curve:
        lines += ["", "PiGDM accuracy-cost curve (first systems):", "",
                  "| Euler steps | sample chi²/N | pixel coverage 68% / 95% | z sd | network passes / sample | s / sample |",
                  "|---|---|---|---|---|---|"]
        for s, v in curve.items():
            if not v.get("finite_systems"):
                lines.append(f"| {s} | non-finite | | | | |")
                continue
            lines.append(f"| {s} | {v['chi2_over_N']:.3f} | {v['cover68']:.3f} / {v['cover95']:.3f} | {v['z_sd']:.3f} | "
                         f"{v['passes_per_sample']:.0f} | {v['seconds_per_sample']:.3f} |")
    return lines


def figures(summary, curve, n_pix, figdir, tag):
    figdir.mkdir(parents=True, exist_ok=True)
    ok = {k: v for k, v in summary.items() if v.get("finite_systems")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.linspace(n_pix - 5 * np.sqrt(2 * n_pix), n_pix + 8 * np.sqrt(2 * n_pix), 300)
    axes[0].plot(x / n_pix, stats.chi2(n_pix).pdf(x) * n_pix, "k-", label=r"$\chi^2_N$")
    for k, v in ok.items():
        axes[0].hist(np.array(v["chi2_all"]) / n_pix, bins=30, density=True, histtype="step", label=k)
    axes[0].set_xlabel(r"sample $\chi^2/N$")
    axes[0].legend(fontsize=8)
    axes[1].plot([0, 1], [0, 1], "k:")
    for k, v in ok.items():
        axes[1].plot(v["tarp_alpha"], v["tarp_ecp"], label=f"{k} (ATC {v['tarp_atc']:+.2f})")
    axes[1].set_xlabel("credibility level")
    axes[1].set_ylabel("expected coverage (TARP)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / f"{tag}_chi2_tarp.png", dpi=100)
    if curve:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        steps = [s for s, v in curve.items() if v.get("finite_systems")]
        ax.plot([curve[s]["passes_per_sample"] for s in steps], [curve[s]["chi2_over_N"] for s in steps], "o-", label="chi²/N")
        ax.plot([curve[s]["passes_per_sample"] for s in steps], [curve[s]["cover68"] / 0.68 for s in steps], "s-",
                label="68% coverage / 0.68")
        ax.axhline(1, color="k", ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("network passes per sample (PiGDM)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(figdir / f"{tag}_step_curve.png", dpi=100)


if __name__ == "__main__":
    main()
