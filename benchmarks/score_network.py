"""Score-network throughput on this CPU, as a fraction of the float32 matmul rate measured in the
same run (perf-anchors.md section 8), for the shipped prior and a 64x64 reference size; and the
cost of a network pass with its VJP inside a ``lax.scan`` (where every reverse-diffusion step runs
it) with blindlens's matrix-product convolution against the native XLA convolution it replaced.

Usage: python benchmarks/score_network.py [--prior PATH] [--repeats 20]
Prints a markdown table; results are recorded in docs/performance.md.
"""

import argparse
import time

import equinox as eqx
import jax
import jax.random as jr

from blindlens.score_network import (
    ScoreNetworkConfig,
    ScoreUNet,
    count_parameters,
    native_convolutions,
)
from blindlens.score_prior import ScorePrior


def timeit(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(fn(*args))
        best = min(best, (time.perf_counter() - t) / repeats)
    return best


def flops_of(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def matmul_gflops(repeats):
    a = jr.normal(jr.key(0), (1024, 1024))
    f = jax.jit(lambda a: a @ a)
    return 2 * 1024**3 / timeit(f, a, repeats=repeats) / 1e9


def measure(name, net, repeats):
    n = net.config.image_size
    x1 = jr.normal(jr.key(1), (n, n))
    xb = jr.normal(jr.key(2), (32, n, n))
    single = eqx.filter_jit(lambda x: net.score(x, 0.3))
    batch = eqx.filter_jit(lambda x: jax.vmap(lambda z: net.score(z, 0.3))(x))
    vjp = eqx.filter_jit(lambda x: jax.vjp(lambda z: net.denoise(z, 0.3), x)[1](x)[0])
    t1, tb, tv = timeit(single, x1, repeats=repeats), timeit(batch, xb, repeats=max(repeats // 8, 2)), timeit(vjp, x1, repeats=repeats)
    f1 = flops_of(lambda x: net.score(x, 0.3), x1)
    return {"name": name, "params": count_parameters(net), "size": n, "t1": t1, "tb": tb, "tv": tv,
            "gflop": f1 / 1e9}


def scan_step_time(net, native: bool, steps=20):
    """Seconds per denoiser pass + VJP inside a ``lax.scan`` of ``steps`` steps."""
    n = net.config.image_size

    def step(x, _):
        d, vjp = jax.vjp(lambda z: net.denoise(z, 0.3), x)
        return x + 1e-3 * vjp(d)[0], None

    fn = eqx.filter_jit(lambda x: jax.lax.scan(step, x, None, length=steps)[0])
    x = jr.normal(jr.key(4), (n, n))
    if native:  # a fresh function: traced (here, at its first call) inside the context
        with native_convolutions():
            return timeit(fn, x, repeats=2) / steps
    return timeit(fn, x, repeats=2) / steps


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--prior", default=None)
parser.add_argument("--repeats", type=int, default=20)
args = parser.parse_args()

peak = matmul_gflops(args.repeats)
prior = ScorePrior.load(args.prior) if args.prior else ScorePrior.default()
rows = [measure("shipped default prior", prior.network, args.repeats),
        measure("64x64 reference (16,32,64,64)", ScoreUNet(ScoreNetworkConfig(64, (16, 32, 64, 64)), key=jr.key(0)), args.repeats)]
print(f"float32 matmul (1024^2, jax): {peak:.1f} GFLOP/s\n")
print("| network | params | image | GFLOP/eval | single: ms (evals/s, % of matmul) | batch 32: ms/image (evals/s, %) | denoiser VJP single: ms |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    pct1 = 100 * r["gflop"] / r["t1"] / peak
    pctb = 100 * r["gflop"] * 32 / r["tb"] / peak
    print(f"| {r['name']} | {r['params']:,} | {r['size']}x{r['size']} | {r['gflop']:.3f} | "
          f"{1e3 * r['t1']:.2f} ({1 / r['t1']:.0f}/s, {pct1:.0f}%) | {1e3 * r['tb'] / 32:.2f} ({32 / r['tb']:.0f}/s, {pctb:.0f}%) | {1e3 * r['tv']:.2f} |")

print("\nInside a lax.scan (a reverse-diffusion loop): one denoiser pass + its VJP per step\n")
print("| network | native XLA convolution: ms/step | matrix-product convolution (default): ms/step | speed-up |")
print("|---|---|---|---|")
for name, net in [("shipped default prior", prior.network),
                  ("64x64 reference (16,32,64,64)", ScoreUNet(ScoreNetworkConfig(64, (16, 32, 64, 64)), key=jr.key(0)))]:
    slow, fast = scan_step_time(net, native=True), scan_step_time(net, native=False)
    print(f"| {name} | {1e3 * slow:.1f} | {1e3 * fast:.1f} | {slow / fast:.1f}x |")
