"""A fine prior against a coarser one (by default the 64 x 64 prior at 0.05"/pixel against the
shipped 32 x 32 prior at 0.1"/pixel; any pair whose sizes differ by a whole factor), on held-out
galaxies at the fine pixel scale (issue 14: "report its held-out denoising error and morphology statistics
against the current prior").

Denoising: for each noise level sigma (per 0.05" pixel), the mean squared error per 0.05" pixel of

* the fine prior, ``D_64(x + sigma z; sigma)``;
* the coarse prior used the only way it can be on such data: average the noisy image 2 x 2 (the
  noise drops to sigma / 2), denoise with ``D_32(.; sigma / 2)``, repeat each pixel 2 x 2;
* the floor of any 0.1" representation: ``|| x - upsample(block_mean(x)) ||^2`` (what the coarse
  grid cannot hold, whatever its prior).

Morphology: flux, half-light radius, ellipticity and concentration of reverse-diffusion samples of
each prior against the held-out galaxies (two-sample KS), each at its own pixel scale.

Usage (held-out sets: ``blindlens make-galaxies --population broad --seed 12`` and
``--population disk --seed 2``):
    python scripts/highres_prior_comparison.py --fine src/blindlens/data/prior_64.eqx \
        --heldout broad=training_data/heldout_broad --heldout disk=training_data/heldout_disk \
        --samples 128 --steps 200
writes docs/prior_64.md, docs/prior_64.json and docs/figures/prior_64_*.png.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from blindlens.diffusion_sde import sample_reverse_diffusion  # noqa: E402
from blindlens.image_sets import bin_images, load_image_set  # noqa: E402
from blindlens.morphology import morphology_summaries  # noqa: E402
from blindlens.score_prior import ScorePrior  # noqa: E402
from blindlens.training import heldout_loss_by_sigma  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--fine", required=True, help="the 64 x 64 prior file")
parser.add_argument("--coarse", default=None, help="the 32 x 32 prior file (default: the shipped one)")
parser.add_argument("--heldout", action="append", required=True, metavar="NAME=PATH",
                    help="held-out 64 x 64 galaxies at 0.05\" (repeatable)")
parser.add_argument("--num", type=int, default=256, help="held-out galaxies per set for the denoising error")
parser.add_argument("--samples", type=int, default=128)
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--out", type=Path, default=Path("docs"))
parser.add_argument("--name", default="prior_64")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

fine = ScorePrior.load(args.fine)
coarse = ScorePrior.load(args.coarse) if args.coarse else ScorePrior.default()
factor = fine.shape[0] // coarse.shape[0]
sets = {name: load_image_set(path) for name, path in (h.split("=", 1) for h in args.heldout)}
key = jr.key(args.seed)
sigmas = np.geomspace(0.01, 5.0, 10)


def coarse_on_fine(x, sigma):
    b = x.reshape(x.shape[0] // factor, factor, x.shape[1] // factor, factor).mean(axis=(1, 3))
    d = coarse.network.denoise(b, sigma / factor)  # block-mean noise is sigma / factor
    return jnp.repeat(jnp.repeat(d, factor, 0), factor, 1)


fine_label = f"{fine.shape[0]}x{fine.shape[1]} at {fine.pixel_scale:g}\""
coarse_label = f"{coarse.shape[0]}x{coarse.shape[1]} at {coarse.pixel_scale:g}\""
px = f"{fine.pixel_scale:g}\" pixel"
report = {"fine": args.fine, "coarse": args.coarse or "shipped", "fine_training": fine.metadata.get("training"),
          "denoising": {}, "morphology": {}}
fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
for ax, (name, images) in zip(axes[0], sets.items()):
    test = images[: args.num]
    mse_fine = heldout_loss_by_sigma(fine.network.denoise, test, sigmas, key=key)
    mse_coarse = heldout_loss_by_sigma(coarse_on_fine, test, sigmas, key=key)
    floor = float(np.mean((test - np.repeat(np.repeat(bin_images(test, factor), factor, 1), factor, 2)) ** 2))
    report["denoising"][name] = [
        {"sigma": float(s), "mse_fine": float(a), "mse_coarse": float(b), "ratio": float(a / b)}
        for s, a, b in zip(sigmas, mse_fine, mse_coarse)
    ]
    report["denoising"][name + "_binning_floor"] = floor
    ax.loglog(sigmas, mse_fine, "o-", label=f"{fine_label} ({Path(args.fine).name})")
    ax.loglog(sigmas, mse_coarse, "s--", label=f"{coarse_label} (binned, denoised, repeated)")
    ax.axhline(floor, color="k", lw=0.8, ls=":", label=f"{coarse.pixel_scale:g}\" binning floor")
    ax.set_title(f"held-out: {name} ({len(test)} galaxies)", fontsize=9)
    ax.set_xlabel(f"noise sigma per {px}")
    ax.set_ylabel(f"MSE per {px}")
axes[0, 0].legend(fontsize=7)
fig.tight_layout()
figdir = args.out / "figures"
figdir.mkdir(parents=True, exist_ok=True)
fig.savefig(figdir / f"{args.name}_denoising.png", dpi=100)


def draw_samples(prior, key):
    score_fn = lambda x, t, a: prior.score(x, t)  # noqa: E731
    draw = jax.jit(jax.vmap(lambda k: sample_reverse_diffusion(k, prior.sde, score_fn, prior.shape,
                                                              num_steps=args.steps, solver="heun")))
    t0 = time.time()
    out = np.concatenate([np.asarray(draw(jr.split(jr.fold_in(key, i), 32)))
                          for i in range(int(np.ceil(args.samples / 32)))])[: args.samples]
    return out, (time.time() - t0) / args.samples


samples = {}
for label, prior in (("fine", fine), ("coarse", coarse)):
    samples[label], report[f"seconds_per_sample_{label}"] = draw_samples(prior, jr.fold_in(key, 7))
stat_names = ["flux", "half_light_radius", "ellipticity", "concentration"]
for name, images in sets.items():
    rows = []
    for label, prior in (("fine", fine), ("coarse", coarse)):
        real = images if label == "fine" else bin_images(images, factor)
        m_s = morphology_summaries(samples[label], prior.pixel_scale)
        m_r = morphology_summaries(real, prior.pixel_scale)
        for stat in stat_names:
            ks = stats.ks_2samp(m_s[stat], m_r[stat])
            rows.append({"prior": label, "statistic": stat, "sample_median": float(np.median(m_s[stat])),
                         "heldout_median": float(np.median(m_r[stat])), "ks_statistic": float(ks.statistic)})
    report["morphology"][name] = rows

fig, axes = plt.subplots(3, 8, figsize=(12, 4.8))
first = next(iter(sets.values()))
for i, ax in enumerate(axes.flat):
    img = samples["fine"][i] if i < 8 else (samples["coarse"][i - 8] if i < 16 else first[i - 16])
    ax.imshow(img, origin="lower", cmap="magma", vmin=0)
    ax.set_axis_off()
axes[0, 0].set_title(f"{fine_label} prior samples", loc="left", fontsize=8)
axes[1, 0].set_title(f"{coarse_label} prior samples", loc="left", fontsize=8)
axes[2, 0].set_title("held-out galaxies", loc="left", fontsize=8)
fig.tight_layout()
fig.savefig(figdir / f"{args.name}_samples.png", dpi=80)

(args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
lines = [f"Fine prior: `{args.fine}`; coarse: {report['coarse']}. Command: see `scripts/highres_prior_comparison.py`.", ""]
for name in sets:
    lines += [f"**Held-out {name}**: MSE per {px} (binning floor of any {coarse.pixel_scale:g}\" grid: "
              f"{report['denoising'][name + '_binning_floor']:.3g})", "",
              f"| sigma | {fine_label} | {coarse_label} via binning | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['sigma']:.3g} | {r['mse_fine']:.3g} | {r['mse_coarse']:.3g} | {r['ratio']:.2f} |"
              for r in report["denoising"][name]]
    lines += ["", "| prior | statistic | samples median | held-out median | KS D |", "|---|---|---|---|---|"]
    lines += [f"| {r['prior']} | {r['statistic']} | {r['sample_median']:.3g} | {r['heldout_median']:.3g} | "
              f"{r['ks_statistic']:.3f} |" for r in report["morphology"][name]]
    lines += [""]
lines += [f"Sampling ({args.steps} Heun steps, batches of 32, this CPU): "
          f"{report['seconds_per_sample_fine']:.2f} s per {fine_label} sample, "
          f"{report['seconds_per_sample_coarse']:.2f} s per {coarse_label} sample."]
(args.out / f"{args.name}_tables.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
