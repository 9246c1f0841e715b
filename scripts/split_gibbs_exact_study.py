"""The exact split-Gibbs move on the known answers (issue 19): the 16x16 Gaussian posterior and the gold standard.

1. Exact-Gaussian invariance: 2000 exact posterior draws (under the prior floored at sigma(t_final),
   the move's target, ``blindlens.split_gibbs``) moved three times, for several denoise solvers and
   step counts, plus a control with white auxiliary noise; whitened chi^2/d (expected 1, sd
   ``sqrt(2/(d M))``), the mean offset (expected 1, sd ``sqrt(2/d)``), the per-mode variance range
   and the start/moved correlation per posterior mode (how far three moves carry a draw).
2. The gold standard of ``tests/test_gibbs_kernel.py`` (theta_E of a 16x16 GP source with its exact
   marginal) with the split-Gibbs move in every sweep, for several seeds: the mean's offset in units
   of its ESS-based Monte-Carlo error. Consistent seeds would scatter as N(0, 1).

Usage::

    JAX_PLATFORMS=cpu python scripts/split_gibbs_exact_study.py --gold-seeds 7 2 3 > docs/split_gibbs_exact.md
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from blindlens.testing.gold_problem import (
    LowRankExactGuidance,
    Problem,
    exact_theta_e_marginal,
    gold_check,
    mcse_sd,
)
from blindlens.testing.lensed_gaussian import gaussian_problem, posterior_metrics

import blindlens.split_gibbs as sg
from blindlens.gaussian_prior import GaussianSourcePrior, operator_matrix


def exact_table(num: int) -> list[str]:
    prior, op, y, sigma, _ = gaussian_problem(jr.key(2026))
    a = np.asarray(operator_matrix(op), np.float64)
    top = np.linalg.eigh(a.T @ a / sigma**2)[1][:, -1]  # the best-measured direction
    rows = ["| denoise | network passes / move | whitened χ²/d (sd) | mean offset (sd) | mode variance ratio "
            "(band) | variance ratio along the best-measured direction | start/moved correlation per mode: "
            "median (max) | ms / move (CPU) |", "|---|---|---|---|---|---|---|---|"]
    settings = [("heun", 4, False), ("heun", 10, False), ("euler", 10, False), ("euler", 40, False),
                ("heun", 10, True)]
    for solver, steps, white in settings:
        config = sg.SplitGibbsConfig(denoise_steps=steps, solver=solver, num_moves=3, denoise_step_size=None)
        floor = sg.floor_sigma(prior, config)
        cov = prior.eigvecs @ jnp.diag(prior.eigvals) @ prior.eigvecs.T + floor**2 * jnp.eye(prior.eigvals.size)
        post = GaussianSourcePrior(prior.mean, cov, prior.sde, prior.pixel_scale).posterior(op, y, sigma)
        start = post.sample(jr.key(11), num)
        original = sg.chebyshev_apply
        if white:
            sg.chebyshev_apply = lambda matvec, v, *args: v
        try:
            step = eqx.filter_jit(jax.vmap(lambda k, s, c=config: sg.split_gibbs_move(k, prior, op, y, sigma, s, c)))
            keys = jr.split(jr.key(12), num)
            step(keys[:2], start[:2]).block_until_ready()
            t0 = time.time()
            after = step(keys, start).block_until_ready()
            ms = 1e3 * (time.time() - t0) / (3 * num)
        finally:
            sg.chebyshev_apply = original
        m = posterior_metrics(post, after, 0.0)
        r = m["ratio_normalised"]
        z0, z1 = np.asarray(post.whiten(start)), np.asarray(post.whiten(after))
        corr = np.array([np.corrcoef(z0[:, i], z1[:, i])[0, 1] for i in range(z0.shape[1])])
        proj = (np.asarray(after, np.float64).reshape(num, -1) - np.ravel(post.mean)) @ top
        best = float(np.mean(proj**2) / (top @ np.asarray(post.cov, np.float64) @ top))
        name = f"{solver} {steps}" + (" — control: white auxiliary noise" if white else "")
        rows.append(
            f"| {name} | {config.network_passes_per_move} | {m['chi2_per_dim']:.4f} ({m['chi2_sd']:.4f}) "
            f"| {m['mean_offset']:.2f} ({m['mean_offset_sd']:.2f}) | {float(r.min()):.2f}–{float(r.max()):.2f} "
            f"(±{4 * m['ratio_sd']:.2f}) | {best:.2f} | {np.median(corr):.2f} ({corr.max():.3f}) | {ms:.2f} |")
    return rows


def gold_table(seeds) -> list[str]:
    jax.config.update("jax_enable_x64", False)
    import arviz as az
    from numpyro.infer import MCMC

    from blindlens.gibbs_kernel import BlindLensGibbs, GibbsDDRMConfig
    from blindlens.source_posterior import SourceSamplerConfig

    problem = Problem(free=("theta_E",))  # the gold standard of tests/test_gibbs_kernel.py
    grid, cdf, mean, sd = exact_theta_e_marginal(problem)
    exact = LowRankExactGuidance(basis=problem.basis)
    rows = [f"Exact marginal: theta_E = {mean:.5f} ± {sd:.5f}.", "",
            "| source move | seed | sweeps (chains x draws) | theta_E mean | sd | ESS | (mean − exact) / MCSE "
            "| (sd − exact) / MCSE | KS (1% critical) | network passes / sweep |", "|---|---|---|---|---|---|---|---|---|---|"]
    for seed in seeds:
        config = sg.SplitGibbsConfig(num_moves=4)
        kernel = BlindLensGibbs(
            problem.lens_model, problem.observation, problem.prior,
            source_config=SourceSamplerConfig(guidance=exact, num_steps=40),
            warm_start=GibbsDDRMConfig(guidance=exact, num_steps=40), source_grid=problem.source_grid,
            split_gibbs=config,
        )
        mcmc = MCMC(kernel, num_warmup=200, num_samples=1000, num_chains=2, chain_method=jax.vmap, progress_bar=False)
        mcmc.run(jr.key(seed))
        idata = az.from_numpyro(mcmc, log_likelihood=False)
        draws = idata.posterior["theta_E"].values
        ess = float(az.ess(idata, var_names=["theta_E"])["theta_E"])
        z_mean, z_sd, ks, ks_crit = gold_check(draws, ess, mcse_sd(draws, az.ess), grid, cdf, mean, sd)
        rows.append(f"| split Gibbs x4 | {seed} | 2 x 1000 | {draws.mean():.5f} | {draws.std():.5f} | {ess:.0f} "
                    f"| {z_mean:+.2f} | {z_sd:+.2f} | {ks:.3f} ({ks_crit:.3f}) | "
                    f"{config.network_passes_per_move * config.num_moves} |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=2000, help="exact draws moved per setting")
    p.add_argument("--gold-seeds", type=int, nargs="*", default=[7, 2, 3])
    args = p.parse_args(argv)
    print("## Exact-Gaussian invariance (16x16, three moves from exact draws)\n")
    print("\n".join(exact_table(args.num)))
    if args.gold_seeds:
        print("\n## Gold standard with split-Gibbs source moves (theta_E)\n")
        print("\n".join(gold_table(args.gold_seeds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
