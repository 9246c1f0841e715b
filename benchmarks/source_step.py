"""Cost of a fixed-lens source draw with the shipped prior (PiGDM guidance) on this machine.

A demo-sized problem: the bundled held-out galaxy (64x64 at 0.05") on the prior's grid (binned
2x2 for the 32x32 ``default`` prior at 0.1", as is for ``highres``, each pixel repeated 2x2 for
``fine`` at 0.025"), SIE + shear, 72x72 image of 0.05", supersampling 2, peak SNR 20. Measures,
in one run:

* a whole guided draw (``sample_source_posterior``, Euler, ``--steps``) for 1 sample and for a
  batch of ``--batch`` samples (per-sample time);
* its parts: one network pass with its VJP (PiGDM needs both per step), one operator
  application ``A`` with its adjoint, and the number of CG iterations per step (each iteration
  applies ``A`` and ``A^T`` once);
* the share of a draw spent in the network, estimated as steps x (denoise + VJP) / draw time.

Usage: python benchmarks/source_step.py [--prior default|highres|fine --steps 50 --batch 8 --repeats 3];
prints a markdown table (recorded in docs/performance.md). Runs on any JAX backend (on a GPU, the
batch column is what a catalogue of lenses pays per draw).
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from blindlens.grid import PixelGrid
from blindlens.lens_models import SIE, ExternalShear
from blindlens.lensing_operator import LensingOperator
from blindlens.likelihood_score import PiGDM, _solve_whitened
from blindlens.psf import gaussian_psf
from blindlens.score_prior import ScorePrior
from blindlens.simulation import example_source_path, load_source
from blindlens.source_posterior import SourceSamplerConfig, sample_source_posterior

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--prior", choices=("default", "highres", "fine"), default="default")
args = parser.parse_args()


def best_time(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


prior = ScorePrior.shipped(args.prior)
galaxy = load_source(example_source_path()).astype(np.float32)  # 64 x 64 at 0.05"
if prior.shape[0] < galaxy.shape[0]:
    f = galaxy.shape[0] // prior.shape[0]
    galaxy = galaxy.reshape(prior.shape[0], f, prior.shape[1], f).mean(axis=(1, 3))
elif prior.shape[0] > galaxy.shape[0]:
    f = prior.shape[0] // galaxy.shape[0]
    galaxy = np.repeat(np.repeat(galaxy, f, 0), f, 1)  # same surface brightness on a finer grid
lens = SIE(1.1, 0.1, -0.05, 0.03, -0.02) + ExternalShear(0.02, -0.01)
grid = PixelGrid((72, 72), 0.05)
op = LensingOperator(lens, grid, PixelGrid(prior.shape, prior.pixel_scale), psf=gaussian_psf(0.1, 0.05), supersampling=2)
noise = float(galaxy.max() / 20)
data = op(jnp.asarray(galaxy)) + noise * jr.normal(jr.key(1), grid.shape)
config = SourceSamplerConfig(guidance=PiGDM(), num_steps=args.steps)

single = best_time(lambda: sample_source_posterior(jr.key(0), prior, op, data, noise, num_samples=1, config=config),
                   args.repeats)
batch = best_time(lambda: sample_source_posterior(jr.key(0), prior, op, data, noise, num_samples=args.batch,
                                                  config=config), args.repeats) / args.batch

t_mid = jnp.asarray(0.5)
x = jnp.asarray(galaxy) + prior.sde.sigma(t_mid) * jr.normal(jr.key(2), prior.shape)


@eqx.filter_jit
def network_and_vjp(prior, x, t):
    x0, vjp = jax.vjp(lambda z: prior.denoise(z, t), x)
    return vjp(x0)[0]


@eqx.filter_jit
def operator_pair(op, s):
    return op.adjoint(op(s))


@eqx.filter_jit
def cg_iterations(op, data, x0, t):
    problem = PiGDM().prepare(prior, op, data, noise)
    sigma2 = prior.sde.sigma(t) ** 2
    r2 = sigma2 * problem.data_variance / (sigma2 + problem.data_variance)
    return _solve_whitened(op, problem.inv_var, lambda s: r2 * s, data - op(x0), 1e-3, 100)[1]


t_net = best_time(lambda: network_and_vjp(prior, x, t_mid), 20)
t_op = best_time(lambda: operator_pair(op, x), 20)
iters = [int(cg_iterations(op, data, prior.denoise(x, jnp.asarray(t)), jnp.asarray(t))) for t in (0.9, 0.5, 0.2, 0.05)]
network_share = args.steps * t_net / single

print(f"\nPiGDM, {args.steps} Euler steps, 72x72 image (supersampling 2), {prior.shape[0]}x{prior.shape[1]} "
      f"source at {prior.pixel_scale:g}\" ({args.prior}); {jax.devices()[0].device_kind}\n")
print("| quantity | value |\n|---|---|")
print(f"| draw, 1 sample | {single:.3g} s |")
print(f"| draw, batch of {args.batch} | {1e3 * batch:.3g} ms per sample |")
print(f"| network passes per sample | {2 * args.steps + 1} (denoise + VJP per step, final denoise) |")
print(f"| one denoise + VJP (single image) | {1e3 * t_net:.2f} ms |")
print(f"| one A + A^T (single image) | {1e3 * t_op:.2f} ms |")
print(f"| CG iterations per step at t = 0.9, 0.5, 0.2, 0.05 | {', '.join(map(str, iters))} |")
print(f"| network share of a single draw (steps x denoise+VJP / draw) | {100 * network_share:.0f}% |")
