"""Exact Gaussian-posterior study of the likelihood scores (data-and-validation.md §B.2, V-8..V-11).

A Gaussian-process source prior makes the posterior of a lensed, PSF-convolved, noisy image
exactly Gaussian, and every noised score analytic. With the exact prior score, the guided
sampler's remaining error is the likelihood-score approximation (and the integrator). This
script measures, for the exact posterior score, CLA, PiGDM, the calibrated Tweedie-CG score and
a tempered (likelihood x2) control:

* whitened chi^2/d, mean offset and per-eigenmode variance ratios on one observation;
* TARP expected coverage (Lemos et al. 2023, ICML) over an ensemble of prior draws, with ATC;
* the per-time likelihood-score error against the exact score;
* network passes and seconds per sample;
* mode weights for a Gaussian-mixture prior;

at 16x16 (and the one-observation metrics at 32x32), and writes ``docs/source_posterior.md``
and ``docs/figures/exact_gaussian_*.png``.

Run: ``JAX_PLATFORMS=cpu python scripts/exact_gaussian_study.py`` (about 10 minutes on 2 CPU
cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
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

from blindlens.diffusion_sde import VESDE, reverse_time_grid  # noqa: E402
from blindlens.gaussian_prior import (  # noqa: E402
    GaussianMixtureSourcePrior,
    GaussianSourcePrior,
    operator_matrix,
    squared_exponential_covariance,
)
from blindlens.grid import PixelGrid  # noqa: E402
from blindlens.lens_models import SIS  # noqa: E402
from blindlens.lensing_operator import LensingOperator  # noqa: E402
from blindlens.likelihood_score import (  # noqa: E402
    CLA,
    CalibratedTweedie,
    ExactGaussianLikelihoodScore,
    PiGDM,
    TemperedLikelihoodScore,
)
from blindlens.linear_operator import DenseOperator  # noqa: E402
from blindlens.psf import gaussian_psf  # noqa: E402
from blindlens.source_posterior import SourceSamplerConfig, sample_source_posterior  # noqa: E402
from blindlens.validation import tarp_coverage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FIGS = DOCS / "figures"
T_FINAL = 1e-3
SOURCE_FIELD = 0.8
IMAGE_FIELD = 1.92
NOISE = 0.05


def _problem(ns, ni, dense):
    sde = VESDE(1e-3, 100.0)
    prior = GaussianSourcePrior.squared_exponential((ns, ns), 2.0 * ns / 16, sde, SOURCE_FIELD / ns, jitter=1e-4)
    image_grid = PixelGrid((ni, ni), IMAGE_FIELD / ni)
    source_grid = PixelGrid((ns, ns), SOURCE_FIELD / ns, (0.03, -0.02))
    psf = gaussian_psf(2.0 * np.sqrt(2.0 * np.log(2.0)) * image_grid.pixel_scale, image_grid.pixel_scale)
    op = LensingOperator(SIS(0.5, 0.0, 0.0), image_grid, source_grid, psf=psf)
    if dense:
        op = DenseOperator(op.as_dense(), (ns, ns), (ni, ni))
    return prior, op


def _observe(prior, op, key):
    k1, k2 = jr.split(key)
    truth = prior.sample(k1, 1)[0]
    return truth, op(truth) + NOISE * jr.normal(k2, op.image_shape)


def _samplers(steps, cla_steps):
    return {
        "exact": (ExactGaussianLikelihoodScore(), steps),
        "CLA": (CLA(), cla_steps),
        "PiGDM": (PiGDM(), steps),
        "calibrated": (CalibratedTweedie(), steps),
        "tempered x2": (TemperedLikelihoodScore(ExactGaussianLikelihoodScore(), 2.0), steps),
    }


def _draw(prior, op, y, guidance, steps, key, n_total, chunk):
    """``n_total`` samples in calls of ``chunk`` (one compilation); returns samples, warm s/sample."""
    config = SourceSamplerConfig(guidance=guidance, num_steps=steps, t_final=T_FINAL)
    out, warm_time, warm_n = [], 0.0, 0
    for i in range(max(1, n_total // chunk)):
        t0 = time.perf_counter()
        s = sample_source_posterior(jr.fold_in(key, i), prior, op, y, NOISE, num_samples=chunk, config=config)
        s.block_until_ready()
        if i > 0:
            warm_time += time.perf_counter() - t0
            warm_n += chunk
        out.append(np.asarray(s))
    per_sample = warm_time / warm_n if warm_n else float("nan")
    return np.concatenate(out), per_sample


def _metrics(post, samples, sigma_final):
    lam = np.asarray(post.eigvals)
    z = np.asarray(post.whiten(jnp.asarray(samples)))
    m, d = z.shape
    expected = 1.0 - sigma_final**2 / (lam + sigma_final**2)
    ratio = np.mean(z**2, axis=0) / expected
    return {
        "chi2": float(np.mean(z**2)),
        "chi2_expected": float(np.mean(expected)),
        "chi2_band": float(3 * np.sqrt(2 * np.mean(expected**2) / (d * m))),
        "mean_offset": float(m * np.sum(np.mean(z, axis=0) ** 2 / expected) / d),
        "mean_offset_band": float(3 * np.sqrt(2.0 / d)),
        "ratio": ratio,
        "ratio_band": float(4 * np.sqrt(2.0 / m)),
        "m": m,
        "d": d,
        "lam": lam,
    }


def _network_passes(prior, op, y, guidance, steps, key, n=4):
    """Network passes per sample along exact noised-posterior states ``x_t ~ N(mu, C + sigma_t^2 I)``."""
    problem = guidance.prepare(prior, op, y, NOISE)
    post = prior.posterior(op, y, NOISE)
    ts = reverse_time_grid(steps, T_FINAL)

    @eqx.filter_jit
    def passes_at(t, key):
        s = prior.sde.sigma(t)
        k1, k2 = jr.split(key)
        xs = post.sample(k1, n) + s * jr.normal(k2, (n, *prior.shape))
        return jnp.mean(jax.vmap(lambda x: guidance.network_passes(x, t, problem))(xs))

    # Euler: one drift evaluation at the start of each step, plus the final denoise
    per_step = [float(passes_at(t, jr.fold_in(key, i))) for i, t in enumerate(ts[:-1])]
    return float(np.sum(per_step) + passes_at(ts[-1], key))


def _score_error_curve(prior, op, y, guidance, sigmas, key, n=4):
    exact = ExactGaussianLikelihoodScore()
    p_exact = exact.prepare(prior, op, y, NOISE)
    problem = guidance.prepare(prior, op, y, NOISE)

    @eqx.filter_jit
    def err_at(sigma, key):
        t = prior.sde.time_at_sigma(sigma)
        k1, k2 = jr.split(key)
        xs = p_exact.posterior.sample(k1, n) + sigma * jr.normal(k2, (n, *prior.shape))
        a = jax.vmap(lambda x: guidance.likelihood_score(x, t, problem))(xs)
        e = jax.vmap(lambda x: exact.likelihood_score(x, t, p_exact))(xs)
        p = jax.vmap(lambda x: exact.posterior_score(x, t, p_exact))(xs)
        return jnp.median(jnp.linalg.norm((a - e).reshape(n, -1), axis=1) / jnp.linalg.norm(p.reshape(n, -1), axis=1))

    return np.array([float(err_at(jnp.asarray(s), jr.fold_in(key, i))) for i, s in enumerate(sigmas)])


# ---- TARP (Lemos, Coogan, Hezaveh & Perreault-Levasseur 2023, ICML, Alg. 1) --------------------


def _tarp_ensemble(prior, op, samplers, n_sims, n_per, key):
    k_refs, k_obs = jr.split(key)
    truths, datas = [], []
    for i in range(n_sims):
        t, y = _observe(prior, op, jr.fold_in(k_obs, i))
        truths.append(np.asarray(t).ravel())
        datas.append(y)
    truths = np.stack(truths)
    lo, hi = truths.min(axis=0), truths.max(axis=0)
    refs = lo + (hi - lo) * np.asarray(jr.uniform(k_refs, truths.shape))
    sigma_f = float(prior.sde.sigma(T_FINAL))
    out = {}
    for name, (guidance, steps) in samplers.items():
        config = SourceSamplerConfig(guidance=guidance, num_steps=steps, t_final=T_FINAL)
        all_s, chi2 = [], []
        for i, y in enumerate(datas):
            s = sample_source_posterior(jr.fold_in(key, 1000 + i), prior, op, y, NOISE, num_samples=n_per, config=config)
            s = np.asarray(s)
            post = prior.posterior(op, y, NOISE)
            z = np.asarray(post.whiten(jnp.asarray(s)))
            exp = 1.0 - sigma_f**2 / (np.asarray(post.eigvals) + sigma_f**2)
            chi2.append(np.mean(z**2) / np.mean(exp))
            all_s.append(s.reshape(n_per, -1))
        alpha, ecp, atc = tarp_coverage(np.stack(all_s), truths, refs)
        out[name] = {"alpha": alpha, "ecp": ecp, "atc": atc, "chi2": float(np.mean(chi2))}
        print(f"  TARP {name:>12}: ATC {atc:+.3f}, max|ECP-a| {np.max(np.abs(ecp - alpha)):.3f}, "
              f"pooled chi2/d (normalised) {np.mean(chi2):.4f}", flush=True)
    return out


# ---- Gaussian mixture -------------------------------------------------------------------------


def _mixture_weights(samplers, steps, n):
    ns, ni = 8, 12
    image_grid = PixelGrid((ni, ni), IMAGE_FIELD / ni)
    source_grid = PixelGrid((ns, ns), SOURCE_FIELD / ns, (0.03, -0.02))
    psf = gaussian_psf(2.0 * np.sqrt(2.0 * np.log(2.0)) * image_grid.pixel_scale, image_grid.pixel_scale)
    lop = LensingOperator(SIS(0.4, 0.0, 0.0), image_grid, source_grid, psf=psf)
    op = DenseOperator(lop.as_dense(), (ns, ns), (ni, ni))
    yy, xx = jnp.mgrid[:ns, :ns]
    blob_a = jnp.exp(-((xx - 2.5) ** 2 + (yy - 3.5) ** 2) / 4.0)
    blob_b = jnp.exp(-((xx - 5.0) ** 2 + (yy - 4.0) ** 2) / 4.0)
    cov = squared_exponential_covariance((ns, ns), 1.5, 0.1, 1e-2)
    prior = GaussianMixtureSourcePrior(
        jnp.array([0.5, 0.5]), jnp.stack([blob_a, blob_b]), jnp.stack([cov, cov]), VESDE(1e-3, 100.0), SOURCE_FIELD / ns
    )
    sigma = 0.5
    y = op(0.6 * blob_a + 0.4 * blob_b) + sigma * jr.normal(jr.key(0), (ni, ni))
    post = prior.posterior(op, y, sigma)
    w0 = float(post.weights[0])
    rows = []
    for name, (guidance, st) in samplers.items():
        if name == "tempered x2":
            continue
        s = sample_source_posterior(jr.key(5), prior, op, y, sigma, num_samples=n, guidance=guidance, num_steps=st)
        frac = float(jnp.mean(jnp.argmax(post.responsibilities(s), axis=1) == 0))
        rows.append((name, frac))
        print(f"  mixture {name:>12}: mode-0 weight {frac:.3f} (analytic {w0:.3f})", flush=True)
    return w0, float(np.sqrt(w0 * (1 - w0) / n)), rows


# ---- main -------------------------------------------------------------------------------------


def _one_observation(ns, ni, samplers, n_total, chunk, key, dense):
    prior, op = _problem(ns, ni, dense)
    truth, y = _observe(prior, op, key)
    post = prior.posterior(op, y, NOISE)
    a = np.asarray(operator_matrix(op))
    aat = a @ a.T
    info = {
        "lam_max_aat": float(np.linalg.eigvalsh(aat)[-1]),
        "median_diag_aat": float(np.median(np.diag(aat))),
        "post_std": (float(np.sqrt(post.eigvals.min())), float(np.sqrt(post.eigvals.max()))),
    }
    sigma_f = float(prior.sde.sigma(T_FINAL))
    results = {}
    for name, (guidance, steps) in samplers.items():
        n = n_total[name] if isinstance(n_total, dict) else n_total
        t0 = time.perf_counter()
        s, per_sample = _draw(prior, op, y, guidance, steps, jr.fold_in(key, 17), n, min(chunk, n))
        wall = time.perf_counter() - t0
        m = _metrics(post, s, sigma_f)
        m["seconds_per_sample"] = per_sample
        m["steps"] = steps
        m["passes"] = _network_passes(prior, op, y, guidance, steps, key)
        m["finite"] = bool(np.all(np.isfinite(s)))
        m["std_map"] = s.std(axis=0)
        results[name] = m
        print(
            f"  {ns}x{ns} {name:>12}: chi2/d {m['chi2']:.4f} (expect {m['chi2_expected']:.4f} +- {m['chi2_band']:.4f}) "
            f"offset {m['mean_offset']:.2f} ratio {np.nanmin(m['ratio']):.2f}-{np.nanmax(m['ratio']):.2f} "
            f"passes {m['passes']:.0f} {per_sample * 1e3:.1f} ms/sample ({wall:.0f}s)",
            flush=True,
        )
    return prior, op, y, post, info, results


def _fmt_row(name, m, atc=None):
    r = m["ratio"]
    atc_s = "" if atc is None else f" {atc:+.3f} |"
    if not m["finite"]:
        return (
            f"| {name} | NaN (diverged) | NaN | NaN |{atc_s} {m['passes']:.0f} | "
            f"{m['seconds_per_sample'] * 1e3:.1f} | {m['steps']} | {m['m']} |"
        )
    return (
        f"| {name} | {m['chi2']:.4f} | {m['mean_offset']:.2f} | {np.min(r):.2f}–{np.max(r):.2f} |{atc_s} "
        f"{m['passes']:.0f} | {m['seconds_per_sample'] * 1e3:.1f} | {m['steps']} | {m['m']} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sample counts (smoke test)")
    parser.add_argument("--steps", type=int, default=200, help="Euler steps (CLA uses 5x: it is stiff)")
    args = parser.parse_args(argv)
    FIGS.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    q = args.quick
    steps = 20 if q else args.steps
    samplers = _samplers(steps, 5 * steps)

    print("16x16 single observation", flush=True)
    n16 = 40 if q else {"exact": 2000, "CLA": 1000, "PiGDM": 1000, "calibrated": 600, "tempered x2": 1000}
    prior, op, y, post, info16, res16 = _one_observation(16, 24, samplers, n16, 20 if q else 200, jr.key(2026), True)

    print("16x16 TARP ensemble", flush=True)
    n_sims, n_per = (6, 10) if q else (30, 40)
    tarp = _tarp_ensemble(prior, op, samplers, n_sims, n_per, jr.key(77))

    print("per-time likelihood-score error", flush=True)
    sigmas = np.logspace(-3, 2, 11)
    errors = {
        name: _score_error_curve(prior, op, y, g, sigmas, jr.key(5))
        for name, (g, _) in samplers.items()
        if name in ("CLA", "PiGDM", "calibrated")
    }
    for name, e in errors.items():
        print(f"  {name:>12}: " + " ".join(f"{v:.1e}" for v in e), flush=True)

    print("32x32 single observation", flush=True)
    n32 = 10 if q else {"exact": 300, "CLA": 60, "PiGDM": 60, "calibrated": 24, "tempered x2": 200}
    _, _, _, _, info32, res32 = _one_observation(32, 48, samplers, n32, 10 if q else 12, jr.key(2027), False)

    print("Gaussian mixture mode weights", flush=True)
    w0, w_se, mix_rows = _mixture_weights(samplers, steps, 60 if q else 600)

    _figures(res16, tarp, errors, sigmas, post)
    elapsed = time.perf_counter() - t_start
    _write_markdown(info16, res16, tarp, errors, sigmas, info32, res32, w0, w_se, mix_rows, args, elapsed, n_sims, n_per)
    print(f"done in {elapsed / 60:.1f} min", flush=True)


def _figures(res16, tarp, errors, sigmas, post):
    colors = {"exact": "k", "CLA": "tab:red", "PiGDM": "tab:orange", "calibrated": "tab:blue", "tempered x2": "tab:gray"}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, m in res16.items():
        if m["finite"]:
            order = np.argsort(m["lam"])
            ax.plot(np.sqrt(m["lam"][order]), m["ratio"][order], ".", ms=3, color=colors[name], label=name)
    band = res16["exact"]["ratio_band"]
    ax.axhspan(1 - band, 1 + band, color="k", alpha=0.08, label="4σ band (exact, M=2000)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("posterior std of eigenmode")
    ax.set_ylabel("sample variance / exact variance")
    ax.set_title("16x16 SIS+PSF, Gaussian prior: per-eigenmode variance ratio")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(FIGS / "exact_gaussian_variance_ratio.png", dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, r in tarp.items():
        ax.plot(r["alpha"], r["ecp"], color=colors[name], label=f"{name} (ATC {r['atc']:+.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("credibility level α")
    ax.set_ylabel("expected coverage")
    ax.set_title("TARP, 16x16 ensemble")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGS / "exact_gaussian_tarp.png", dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, e in errors.items():
        ax.loglog(sigmas, e, "o-", color=colors[name], label=name)
    ax.set_xlabel("σ_t")
    ax.set_ylabel("|approx − exact| / |exact posterior score|")
    ax.set_title("Per-time likelihood-score error (16x16)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIGS / "exact_gaussian_score_error.png", dpi=130)
    plt.close(fig)

    names = [n for n in res16 if res16[n]["finite"]]
    true_std = np.sqrt(np.diag(np.asarray(post.cov))).reshape(post.shape)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(2.3 * (len(names) + 1), 2.6))
    vmax = float(true_std.max())
    axes[0].imshow(true_std, origin="lower", vmin=0, vmax=vmax)
    axes[0].set_title("analytic std", fontsize=8)
    for ax, name in zip(axes[1:], names):
        ax.imshow(res16[name]["std_map"], origin="lower", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(FIGS / "exact_gaussian_std_maps.png", dpi=130)
    plt.close(fig)


def _write_markdown(info16, res16, tarp, errors, sigmas, info32, res32, w0, w_se, mix_rows, args, elapsed, n_sims, n_per):
    hdr16 = (
        "| likelihood score | whitened χ²/d | mean offset | eigenmode variance ratio (min–max) | TARP ATC | "
        "network passes / sample | ms / sample (CPU) | Euler steps | samples |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows16 = "\n".join(_fmt_row(n, m, tarp[n]["atc"]) for n, m in res16.items())
    hdr32 = (
        "| likelihood score | whitened χ²/d | mean offset | eigenmode variance ratio (min–max) | "
        "network passes / sample | ms / sample (CPU) | Euler steps | samples |\n|---|---|---|---|---|---|---|---|"
    )
    rows32 = "\n".join(_fmt_row(n, m) for n, m in res32.items())
    e16 = res16["exact"]
    e32 = res32["exact"]
    err_hdr = "| σ_t | " + " | ".join(f"{s:.0e}" for s in sigmas) + " |\n|---|" + "---|" * len(sigmas)
    err_rows = "\n".join(f"| {n} | " + " | ".join(f"{v:.1e}" for v in e) + " |" for n, e in errors.items())
    mix = "\n".join(f"| {n} | {f:.3f} | {(f - w0) / w_se:+.1f} |" for n, f in mix_rows)
    mix_summary = ", ".join(f"{n} {(f - w0) / w_se:+.1f} sd" for n, f in mix_rows)
    text = f"""# Source posterior for a fixed lens: exactness of the likelihood scores

Generated by `JAX_PLATFORMS=cpu python scripts/exact_gaussian_study.py{' --quick' if args.quick else ''}`
({elapsed / 60:.1f} min on this machine's 2 CPU cores, shared with other jobs: the ms/sample
columns are indicative only). Every number below is a deterministic function of the keys in the script. Figures: `docs/figures/exact_gaussian_*.png`.

## Set-up (data-and-validation.md §B.2)

* Source prior: Gaussian process, squared-exponential kernel, length 2 px (16x16; 4 px at 32x32),
  unit amplitude, jitter 1e-4 (`GaussianSourcePrior.squared_exponential`), 0.05″ (16x16) source pixels.
* Lens: SIS, θ_E = 0.5″, bilinear ray tracing (`LensingOperator`) into a 24x24 image (48x48 at 32x32,
  1.92″ field), Gaussian PSF with σ = 1 image pixel, white noise σ_n = {NOISE}.
  λ_max(AAᵀ) = {info16['lam_max_aat']:.1f} against a median diagonal of {info16['median_diag_aat']:.3f}
  (16x16); posterior std per eigenmode {info16['post_std'][0]:.4f}–{info16['post_std'][1]:.3f}.
* VE diffusion σ ∈ [1e-3, 100], Euler–Maruyama (`SourceSamplerConfig(solver="euler")`), t_final = 1e-3,
  final Tweedie denoise, exact prior score. CLA runs {5 * args.steps} steps (it is stiff: NaN at 500 in
  lensing), the others {args.steps} steps.
* The final Tweedie denoise returns E[s | x_tf], whose variance along posterior eigenmode i is
  c_i (1 − σ_f²/(c_i + σ_f²)); the *expected* whitened χ²/d is therefore
  {e16['chi2_expected']:.4f} (16x16), not 1, and the variance ratios below are normalised by it.
* Bands: 3σ for χ²/d (±{e16['chi2_band']:.4f} at M = {e16['m']}), 3σ = ±{e16['mean_offset_band']:.2f}
  for the mean offset M·(x̄−μ)ᵀC⁻¹(x̄−μ)/d, and ±4·√(2/M) = ±{e16['ratio_band']:.2f} (Bonferroni over
  d = {e16['d']} modes) for the variance ratios.
* TARP (Lemos et al. 2023; `blindlens.validation.tarp_coverage`): {n_sims} prior draws × {n_per} samples,
  Euclidean distance on the {e16['d']} pixels, references uniform in the box of the prior draws.
  ATC = mean(ECP − α): negative means overconfident.
* Network passes: evaluations of the prior network per sample along the trajectory, a forward
  evaluation, a JVP and a VJP counting one pass each (the exact score uses no network); measured
  by `network_passes` on states drawn from the exact noised posterior at each step.

## 16x16 (one observation; TARP over the ensemble)

{hdr16}
{rows16}

![variance ratio per eigenmode](figures/exact_gaussian_variance_ratio.png)
![TARP](figures/exact_gaussian_tarp.png)
![std maps](figures/exact_gaussian_std_maps.png)

## 32x32 (one observation)

Expected χ²/d {e32['chi2_expected']:.4f} ± {e32['chi2_band']:.4f} (3σ at M = {e32['m']});
λ_max(AAᵀ) = {info32['lam_max_aat']:.1f}, median diag {info32['median_diag_aat']:.3f}.
Lensing operator applied matrix-free (`LensingOperator`), not as a dense matrix.

{hdr32}
{rows32}

## Per-time likelihood-score error (16x16)

Median over 4 states x_t ~ p_t(x | y) of |approx − exact| / |exact posterior score|
(the drift the SDE follows):

{err_hdr}
{err_rows}

![score error](figures/exact_gaussian_score_error.png)

## Gaussian-mixture prior: mode weights

Two-component mixture on an 8x8 source, SIS + PSF, σ_n = 0.5; analytic posterior weight of mode 0 =
{w0:.3f} ± {w_se:.3f} (binomial sd at the sample size used).

| likelihood score | sampled mode-0 weight | (sampled − analytic) / sd |
|---|---|---|
{mix}

## Reading the results

* **Exact posterior score** is inside every band: the integrator (diffrax Euler in s = 1 − t,
  {args.steps} steps) and the final denoise are not a source of error at this size.
* **CLA** keeps only diag(AAᵀ) while lensing and the PSF correlate image pixels strongly
  (λ_max(AAᵀ) ≫ median diagonal), so it over-weights the data at intermediate noise (score error
  O(1–10) at σ_t ~ 0.1–10). Its samples are mis-centred and its per-mode variances wrong by large
  factors; it also needs ≥ 1000 Euler steps to stay finite.
* **PiGDM** (full r_t² AAᵀ solved by CG, v = prior pixel variance) is stable and cheap (two network
  passes per step), but its isotropic Tweedie covariance is wrong for a correlated prior: score
  error O(1) at σ_t ≳ 3, over-dispersed modes and a mis-centred mean. The `covariance="diag"` variant
  is stiff like CLA and diverges (NaN) at 1000 steps here.
* **Calibrated** (`CalibratedTweedie`: N(y; A x̂₀, Σ + σ_t² A J Aᵀ), J by JVPs, CG) matches the exact
  sampler within the Monte-Carlo bands and its score error stays at the CG tolerance level at every σ_t.
  Its cost is the CG iterations: at high noise σ_t² J → S and the whitened system is ill-conditioned.
* **Tempered ×2** control fails every check, as it must.
* TARP with random references separates CLA (overconfident) and the tempered control, but is weak
  against PiGDM's dispersion error (see data-and-validation.md §B.2 for why); the exact metrics are the
  sharp test.
* **Gaussian mixture**: only the exact score reproduces the analytic mode weights
  ({mix_summary}). The calibrated score treats p(s | x_t) as Gaussian, which is false for a
  multimodal prior at intermediate noise, and it mis-weights the modes; it is exact only for
  unimodal Gaussian priors. A mode-aware correction (e.g. sequential Monte Carlo reweighting of the
  trajectories) is future work; the CI test carries this as a strict `xfail`.

## Which likelihood score to use

* Default in `SourceSamplerConfig`: `PiGDM()` (full AAᵀ by CG through the lensing operator only):
  2 network passes per step, stable at a few hundred Euler steps, modest mis-calibration.
* `CalibratedTweedie()` when calibrated uncertainties matter (coverage studies, final science
  runs): exact for Gaussian priors, tens of network passes per step (see the table), tune with
  `cg_tol` / `cg_maxiter` and `cheap_above_sigma`. Its cost is well beyond 3x CLA's per sample, so it
  is the accurate mode, not the default.
* `CLA()` only with ≥ 1000 steps and as a baseline; its uncertainties are not trustworthy in lensing.
"""
    (DOCS / "source_posterior.md").write_text(text)


if __name__ == "__main__":
    main()
