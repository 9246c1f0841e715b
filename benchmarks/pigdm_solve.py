"""PiGDM's linear solve: the image-plane CG (the previous default) against the source-plane PCG.

Each PiGDM step needs ``g = A^T (Sigma + r_t^2 A A^T)^{-1} (y - A x0_hat)``. The previous default
solved it by plain conjugate gradients on the whitened image-plane system, which ran into its
100-iteration cap at every step with ``t >= 0.5`` (docs/performance.md); the new default
(``PiGDM(cg_space="source")``) solves ``(I / r_t^2 + A^T W A) z = A^T W r`` (Woodbury, ``g = z / r_t^2``)
with the diagonal preconditioner ``1 / r_t^2 + A^T W A 1``. Both cost one forward and one adjoint
call per iteration. Per time ``t`` of a reverse diffusion this prints ``r_t^2 max(W diag(A A^T))``
(the data's weight against the prior's), the relative error of ``g`` after 10 / 20 / 50 / 100
iterations against a converged solve, the iterations each needs to a relative residual of 1e-3
(its own system's), and the seconds per 100 iterations.

The residual is the one a reverse diffusion meets: ``x0_hat`` the prior's Tweedie mean of the true
source noised to ``t``. Problem: ``--system DIR`` (``obs.fits`` and ``truth.npz`` from
``scripts/lenstronomy_systems.py``: its image, noise, PSF, true lens and source centre, 64 x 64 grid
of the ``highres`` prior, supersampling 3), or by default the bundled held-out galaxy lensed by an SIE
+ shear onto 96 x 96 pixels of 0.05" (PSF FWHM 0.1", supersampling 3, peak SNR about 40).

Usage: python benchmarks/pigdm_solve.py [--system DIR] [--repeats 3]; prints a markdown table
(recorded in docs/performance.md).
"""

import argparse
import time
import tomllib

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from blindlens.grid import PixelGrid
from blindlens.lens_config import lens_from_config
from blindlens.lens_models import SIE, ExternalShear
from blindlens.lensing_operator import LensingOperator
from blindlens.likelihood_score import PiGDM, _solve_source_plane, _solve_whitened
from blindlens.observation import load_observation
from blindlens.psf import gaussian_psf
from blindlens.score_prior import ScorePrior
from blindlens.simulation import example_source_path, load_source

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--system", default=None, help="folder with obs.fits and truth.npz (default: built-in problem)")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--draws", type=int, default=4, help="whole guided draws per solve (50 Euler steps)")
parser.add_argument("--times", type=float, nargs="+", default=[1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02])
args = parser.parse_args()

prior = ScorePrior.shipped("highres")
if args.system:
    obs = load_observation(f"{args.system}/obs.fits")
    truth = np.load(f"{args.system}/truth.npz", allow_pickle=True)
    lens = lens_from_config(tomllib.loads(str(truth["lens_toml"])))
    center = tuple(float(v) for v in truth["source_center"])
    source = jnp.asarray(truth["source"], jnp.float32)
    if source.shape != prior.shape or float(truth["source_pixel_scale"]) != prior.pixel_scale:
        raise SystemExit(f"{args.system}: the true source must be {prior.shape} at {prior.pixel_scale}\"/pixel.")
    image_grid, psf, data, noise = obs.image_grid, obs.psf, obs.image, obs.noise
else:
    source = jnp.asarray(load_source(example_source_path()), jnp.float32)  # 64 x 64 at 0.05"
    center = (0.05, -0.03)
    lens = SIE(1.1, 0.05, -0.04, 0.01, 0.02) + ExternalShear(0.03, -0.01)
    image_grid = PixelGrid((96, 96), 0.05)
    psf = gaussian_psf(0.1, 0.05)
    noise = None
source_grid = PixelGrid(prior.shape, prior.pixel_scale, center)
op = LensingOperator(lens, image_grid, source_grid, psf=psf, supersampling=3)
if noise is None:
    clean = op(source)
    noise = jnp.full(clean.shape, float(clean.max()) / 40.0, jnp.float32)
    data = clean + noise * jr.normal(jr.key(0), clean.shape)

spaces = ("image", "source")
budgets = (10, 20, 50, 100)


def guidance_fn(space, maxiter, tol=1e-3):
    score = PiGDM(cg_space=space, cg_maxiter=maxiter, cg_tol=tol)
    problem = score.prepare(prior, op, data, noise)
    return score, problem, jax.jit(lambda x0, t: score._guidance(x0, t, problem)[0])


def iterations_to_tol(space, x0, t):
    """Iterations to the relative residual 1e-3 of the space's own system (at most 1000)."""
    problem = reference[1]  # the same data, weights, v and coverage for both solves
    sigma2 = prior.sde.sigma(t) ** 2
    v = problem.data_variance
    r2 = sigma2 * v / (sigma2 + v)
    resid = problem.data - op(x0)
    if space == "source":
        return int(_solve_source_plane(op, problem.inv_var, r2, resid, problem.coverage, 1e-3, 1000)[2])
    return int(_solve_whitened(op, problem.inv_var, lambda s: r2 * s, resid, 1e-3, 1000)[1])


reference = guidance_fn("source", 3000, tol=1e-7)
capped = {(s, k): guidance_fn(s, k, tol=1e-12) for s in spaces for k in budgets}
w_diag_max = float(jnp.max(reference[1].inv_var * op.diag_aat()))
rows = []
for t in args.times:
    t = jnp.asarray(t, jnp.float32)
    sigma = prior.sde.sigma(t)
    x_t = source + sigma * jr.normal(jr.fold_in(jr.key(1), int(1000 * float(t))), source.shape)
    x0 = prior.denoise(x_t, t)
    v = reference[1].data_variance
    r2 = sigma**2 * v / (sigma**2 + v)
    want = reference[2](x0, t)
    errors = {key: float(jnp.linalg.norm(fn(x0, t) - want) / jnp.linalg.norm(want))
              for key, (_, _, fn) in capped.items()}
    iters = {s: iterations_to_tol(s, x0, t) for s in spaces}
    rows.append((float(t), float(r2) * w_diag_max, errors, iters))

timing = {}
x0 = prior.denoise(source, jnp.asarray(0.5))
for s in spaces:
    fn = capped[(s, 100)][2]
    t = jnp.asarray(0.9)  # every solve runs into the cap here: the time of 100 iterations
    jax.block_until_ready(fn(x0, t))
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x0, t))
        best = min(best, time.perf_counter() - t0)
    timing[s] = best

from blindlens.source_posterior import SourceSamplerConfig, sample_source_posterior

n_pix = float(jnp.sum(reference[1].inv_var > 0))
draws = {}
for s in spaces:
    config = SourceSamplerConfig(guidance=PiGDM(cg_space=s), num_steps=50)
    sample_source_posterior(jr.key(0), prior, op, data, noise, num_samples=1, config=config)  # compile
    seconds, fits = [], []
    for i in range(args.draws):
        t0 = time.perf_counter()
        x = jax.block_until_ready(sample_source_posterior(jr.key(10 + i), prior, op, data, noise, num_samples=1,
                                                          config=config))
        seconds.append(time.perf_counter() - t0)
        x = jnp.asarray(getattr(x, "samples", x)).reshape(prior.shape)
        fits.append(float(jnp.sum(reference[1].inv_var * (data - op(x)) ** 2)) / n_pix)
    draws[s] = (np.median(seconds), fits)
true_fit = float(jnp.sum(reference[1].inv_var * (data - op(source)) ** 2)) / n_pix

print(f"problem: {args.system or 'built-in'}; image {image_grid.shape}, source {prior.shape} at "
      f"{prior.pixel_scale}\", supersampling 3; backend {jax.default_backend()}")
print("\n| t | r_t^2 max(W diag AA^T) | g error after 10 / 20 / 50 / 100 iterations: image plane (before) | "
      "source plane, preconditioned (now) | iterations to residual 1e-3: image | source |")
print("|---|---|---|---|---|---|")
for t, c, errors, iters in rows:
    img = " / ".join(f"{errors[('image', k)]:.2g}" for k in budgets)
    src = " / ".join(f"{errors[('source', k)]:.2g}" for k in budgets)
    print(f"| {t:g} | {c:.3g} | {img} | {src} | {iters['image']} | {iters['source']} |")
print(f"\nwhole guided draws (50 Euler steps, PiGDM defaults but cg_space, keys 10-{9 + args.draws}; "
      f"chi^2/N of the true source on this grid {true_fit:.4f}):\n")
print("| solve | s per draw (median) | chi^2/N of the draws |\n|---|---|---|")
for s in spaces:
    print(f"| {s} plane | {draws[s][0]:.2f} | {', '.join(f'{v:.4f}' for v in draws[s][1])} |")
print(f"\nseconds per 100 iterations (one solve at t = 0.9, best of {args.repeats}): image {timing['image']:.3f}, "
      f"source {timing['source']:.3f} (ratio {timing['source'] / timing['image']:.2f})")
