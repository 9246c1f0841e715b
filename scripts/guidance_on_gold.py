"""Which source step makes the joint lens posterior too narrow? The gold-standard problem with each guidance.

The 16x16 Gaussian-process source problem of the gold-standard test (blindlens.testing.gold_problem,
``theta_E`` free) has an exact lens marginal (the source integrates out in closed form). Its
prior score is exact, so running ``BlindLensGibbs`` with different likelihood guidances (the exact
Gaussian posterior score, PiGDM, CLA) isolates the error of the approximate source step: the
ratio of the chains' ``theta_E`` sd to the exact marginal sd, and the offset of their mean in
exact sd, with Monte Carlo errors from the bulk ESS.

    python scripts/guidance_on_gold.py            # ~10 min on 2 CPU cores
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from blindlens.testing.gold_problem import LowRankExactGuidance, Problem  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402
from numpyro.infer.util import log_density  # noqa: E402

from blindlens.gibbs_kernel import BlindLensGibbs, GibbsDDRMConfig  # noqa: E402
from blindlens.likelihood_score import CLA, PiGDM  # noqa: E402
from blindlens.source_posterior import SourceSamplerConfig  # noqa: E402


def exact_marginal(problem):
    def log_marginal(grid):
        return jax.lax.map(lambda te: log_density(problem.marginal_model, (), {}, {"theta_E": te})[0], grid,
                           batch_size=64)

    coarse = jnp.linspace(0.5, 1.2, 351)
    mode = float(coarse[jnp.argmax(log_marginal(coarse))])
    grid = jnp.linspace(mode - 0.012, mode + 0.012, 801)
    w = np.exp(np.asarray(log_marginal(grid)) - float(jnp.max(log_marginal(grid))))
    w /= w.sum()
    mean = float(w @ np.asarray(grid))
    return mean, float(np.sqrt(w @ (np.asarray(grid) - mean) ** 2))


def main():
    problem = Problem(free=("theta_E",))
    mean, sd = exact_marginal(problem)
    print(f"exact marginal: theta_E {mean:.5f} +- {sd:.5f}")
    rows = []
    for name, guidance, steps in [
        ("exact posterior score", LowRankExactGuidance(basis=problem.basis), 40),
        ("PiGDM", PiGDM(), 40),
        ("CLA (IMEX)", CLA(), 40),
    ]:
        kernel = BlindLensGibbs(
            problem.lens_model, problem.observation, problem.prior,
            source_config=SourceSamplerConfig(guidance=guidance, num_steps=steps),
            warm_start=GibbsDDRMConfig(guidance=LowRankExactGuidance(basis=problem.basis), num_steps=steps),
            source_grid=problem.source_grid,
        )
        mcmc = MCMC(kernel, num_warmup=100, num_samples=500, num_chains=2, chain_method=jax.vmap, progress_bar=False)
        mcmc.run(jr.key(7))
        draws = np.asarray(mcmc.get_samples(group_by_chain=True)["theta_E"])
        ess = float(az.ess(draws))
        m, s = draws.mean(), draws.std(ddof=1)
        # MCSE of the sd by the delta method on the variance, with the bulk ESS
        kurt = np.mean((draws - m) ** 4) / s**4
        se_ratio = 0.5 * np.sqrt((kurt - 1) / ess) * s / sd
        rows.append((name, s / sd, se_ratio, (m - mean) / sd, s / sd / np.sqrt(ess), ess))
        print(f"{name}: sd ratio {s / sd:.3f} +- {se_ratio:.3f}, mean offset {(m - mean) / sd:+.2f} +- "
              f"{s / sd / np.sqrt(ess):.2f} exact sd, ESS {ess:.0f}", flush=True)
    print("\n| source step (40 steps, partial refresh) | theta_E sd / exact sd | mean offset (exact sd) | bulk ESS of 1000 |")
    print("|---|---|---|---|")
    for name, r, se, off, se_off, ess in rows:
        print(f"| {name} | {r:.3f} +- {se:.3f} | {off:+.2f} +- {se_off:.2f} | {ess:.0f} |")


if __name__ == "__main__":
    main()
