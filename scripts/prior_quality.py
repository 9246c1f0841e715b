"""Quality of a score prior against held-out procedural galaxies (issue 3's quality study).

Writes docs/figures/prior_samples.png, docs/figures/prior_denoising_loss.png,
docs/figures/prior_morphology.png and docs/prior_quality.md (tables).

Usage:
    python scripts/prior_quality.py --prior src/blindlens/data/default_prior.eqx \
        --heldout training_data/heldout.npy --train training_data/train --samples 256 --steps 300 --bin 2
"""

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from blindlens.diffusion_sde import sample_reverse_diffusion  # noqa: E402
from blindlens.image_sets import load_image_set  # noqa: E402
from blindlens.morphology import morphology_summaries  # noqa: E402
from blindlens.score_prior import ScorePrior  # noqa: E402
from blindlens.training import heldout_loss_by_sigma  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--prior", default=None, help="prior file (default: the shipped prior)")
parser.add_argument("--heldout", required=True)
parser.add_argument("--train", required=True, help="training set (for the Gaussian baseline)")
parser.add_argument("--samples", type=int, default=256)
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--solver", default="heun")
parser.add_argument("--out", type=Path, default=Path("docs"))
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--bin", type=int, default=2, help="bin held-out/training images to the prior's grid")
args = parser.parse_args()

prior = ScorePrior.load(args.prior) if args.prior else ScorePrior.default()
def _binned(images, b):  # mean over b x b blocks conserves surface brightness
    n, h, w = images.shape
    return images.reshape(n, h // b, b, w // b, b).mean(axis=(2, 4)) if b > 1 else images


heldout = _binned(load_image_set(args.heldout), args.bin)
train = _binned(load_image_set(args.train)[:20000], args.bin)
ps = prior.pixel_scale
figdir = args.out / "figures"
figdir.mkdir(parents=True, exist_ok=True)
report = {}

# 1. held-out denoising loss vs sigma, against the Gaussian (mean + covariance) baseline
mean = train.reshape(len(train), -1).mean(0)
cov = np.cov(train.reshape(len(train), -1), rowvar=False)
evals, evecs = np.linalg.eigh(cov)
evals = np.clip(evals, 0, None)
evecs_j, evals_j, mean_j = jnp.asarray(evecs), jnp.asarray(evals), jnp.asarray(mean)


def gaussian_denoiser(x, sigma):
    z = evecs_j.T @ (x.reshape(-1) - mean_j)
    return (mean_j + evecs_j @ (evals_j / (evals_j + sigma**2) * z)).reshape(x.shape)


sigmas = np.geomspace(prior.sde.sigma_min * 2, prior.sde.sigma_max / 2, 12)
test = heldout[:512]
net_denoise = eqx.filter_jit(lambda x, s: prior.network.denoise(x, s))
key = jr.key(args.seed)
loss_net = heldout_loss_by_sigma(lambda x, s: prior.network.denoise(x, s), test, sigmas, key=key)
loss_gauss = heldout_loss_by_sigma(gaussian_denoiser, test, sigmas, key=key)
report["denoising"] = [
    {"sigma": float(s), "mse_network": float(a), "mse_gaussian": float(b), "ratio": float(a / b)}
    for s, a, b in zip(sigmas, loss_net, loss_gauss)
]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.loglog(sigmas, loss_net, "o-", label="score network")
ax.loglog(sigmas, loss_gauss, "s--", label="Gaussian baseline (train mean+cov)")
ax.set_xlabel("noise sigma (data units)")
ax.set_ylabel("held-out MSE per pixel")
ax.legend()
fig.tight_layout()
fig.savefig(figdir / "prior_denoising_loss.png", dpi=110)

# 2. prior samples
score_fn = lambda x, t, a: prior.score(x, t)  # noqa: E731
draw = jax.jit(jax.vmap(lambda k: sample_reverse_diffusion(k, prior.sde, score_fn, prior.shape,
                                                          num_steps=args.steps, solver=args.solver)))
t0 = time.time()
samples = np.concatenate([np.asarray(draw(jr.split(jr.fold_in(key, i), 32)))
                          for i in range(int(np.ceil(args.samples / 32)))])[: args.samples]
report["sampling_seconds_per_sample"] = (time.time() - t0) / args.samples
report["network_evaluations_per_sample"] = args.steps * (2 if args.solver == "heun" else 1) + 1

fig, axes = plt.subplots(4, 8, figsize=(12, 6.4))
real = heldout[512:528]
for i, ax in enumerate(axes.flat):
    img = samples[i] if i < 16 else real[i - 16]
    ax.imshow(img, origin="lower", cmap="magma", vmin=0)
    ax.set_axis_off()
axes[0, 0].set_title("prior samples (rows 1-2)", loc="left", fontsize=9)
axes[2, 0].set_title("held-out GalSim galaxies (rows 3-4)", loc="left", fontsize=9)
fig.tight_layout()
fig.savefig(figdir / "prior_samples.png", dpi=90)

# 3. morphology statistics with two-sample KS tests
m_s = morphology_summaries(samples, ps)
m_r = morphology_summaries(heldout[: len(samples) * 4], ps)
names = ["flux", "half_light_radius", "ellipticity", "concentration"]
fig, axes = plt.subplots(1, 4, figsize=(13, 3))
report["morphology"] = []
for ax, name in zip(axes, names):
    ks = stats.ks_2samp(m_s[name], m_r[name])
    report["morphology"].append({"statistic": name, "sample_median": float(np.median(m_s[name])),
                                 "heldout_median": float(np.median(m_r[name])),
                                 "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue)})
    bins = np.histogram_bin_edges(np.concatenate([m_s[name], m_r[name]]), 30)
    ax.hist(m_r[name], bins, density=True, alpha=0.5, label="held-out")
    ax.hist(m_s[name], bins, density=True, histtype="step", lw=2, label="prior samples")
    ax.set_title(f"{name}\nKS D={ks.statistic:.2f} p={ks.pvalue:.2g}", fontsize=9)
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(figdir / "prior_morphology.png", dpi=100)

(args.out / "prior_quality.json").write_text(json.dumps(report, indent=1))
lines = ["| sigma | network MSE | Gaussian MSE | ratio |", "|---|---|---|---|"]
lines += [f"| {r['sigma']:.3g} | {r['mse_network']:.3g} | {r['mse_gaussian']:.3g} | {r['ratio']:.2f} |" for r in report["denoising"]]
lines += ["", "| statistic | prior median | held-out median | KS D | KS p |", "|---|---|---|---|---|"]
lines += [f"| {r['statistic']} | {r['sample_median']:.3g} | {r['heldout_median']:.3g} | {r['ks_statistic']:.3f} | {r['ks_pvalue']:.2g} |" for r in report["morphology"]]
lines += ["", f"sampling: {report['network_evaluations_per_sample']} network evaluations and "
          f"{report['sampling_seconds_per_sample']:.2f} s per sample (batches of 32, this CPU)"]
(args.out / "prior_quality_tables.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
