"""Why a move of the grid placement that carries the source along cannot be accepted (issue 18).

The source grid's placement ``alpha`` (``--source-shift sampled``) is the slowest coordinate of a
default run (docs/performance.md, "The grid placement sets the pace"). The natural joint move
proposes ``alpha' = alpha + delta`` with the source translated by the same amount, ``s'(x) =
s(x + delta)``, so that the lensed image barely changes; with a Fourier phase ramp the translation is
unitary and exactly invertible, and the Metropolis-Hastings ratio is the likelihood ratio times the
prior ratio ``p_f(s') / p_f(s)`` at the split-Gibbs floor, the line integral of the network's score.

On a finished run's last draw (lens and source, the command line's model), for a few ``delta``:

* the change of the lens potential ``U = -log p(theta, y | s)`` with the source carried along
  (``+``: the sign the model's ``SHIFT`` convention asks for; ``-``: the wrong sign, a control) and
  with the source left in place;
* ``log p_f(s') - log p_f(s)`` along the translation path at 1, 2 and 8 Gauss-Legendre nodes, and
  along the straight path (a check that the score is close to a gradient there);
* the same prior ratio for a whole-pixel roll (a permutation of the pixels);
* for scale, each parameter's marginal sd in the run (draws after the first 200) over its conditional
  sd given the last draw's source (``sqrt(diag H^-1)`` of the lens potential, constrained units).

Usage:
    python scripts/placement_transport_check.py /tmp/ttp/system_0
Prints a markdown table (recorded in docs/performance.md with the command).
"""

import argparse
import glob
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sweep_schedule import setup  # the benchmark's loader of a finished run

from blindlens.inference.gibbs_core import GibbsCore
from blindlens.inference.source_shift_model import translate_source
from blindlens.source.split_gibbs import SplitGibbsConfig
from blindlens.source_setup import load_source_prior


def _ramp(shape, shift_yx):
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    if shape[0] % 2 == 0:
        fy[shape[0] // 2] = 0.0  # the Nyquist row stays: the shift is then real and exactly invertible
    if shape[1] % 2 == 0:
        fx[:, shape[1] // 2] = 0.0
    return jnp.asarray(-2j * np.pi * (fy * shift_yx[0] + fx * shift_yx[1]))


def shifted(source, shift_yx, t=1.0):
    """``source(y - t dy, x - t dx)``: a Fourier translation by ``t * shift_yx`` pixels."""
    return translate_source(source, -t * jnp.asarray(shift_yx))


def ratio_along_shift(score, source, shift_yx, t_floor, nodes):
    """``log p_f(S s) - log p_f(s)``: Gauss-Legendre line integral of the score along ``t -> S_t s``."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    ramp, spectrum = _ramp(source.shape, shift_yx), jnp.fft.fft2(source)
    total = 0.0
    for xi, wi in zip(0.5 * (x + 1.0), 0.5 * w, strict=True):
        moved = spectrum * jnp.exp(xi * ramp)
        point = jnp.real(jnp.fft.ifft2(moved)).astype(source.dtype)
        velocity = jnp.real(jnp.fft.ifft2(moved * ramp)).astype(source.dtype)
        total += float(wi) * float(jnp.vdot(score(point, jnp.asarray(t_floor)), velocity))
    return total


def ratio_straight(score, a, b, t_floor, nodes=8):
    """The same along the straight path from ``a`` to ``b``."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return sum(float(wi) * float(jnp.vdot(score(a + xi * (b - a), jnp.asarray(t_floor)), b - a))
               for xi, wi in zip(0.5 * (x + 1.0), 0.5 * w, strict=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("system", type=Path, help="folder with obs.fits and a finished run's .nc")
    parser.add_argument("--prior", default="highres")
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.001, 0.0025, 0.005, 0.01],
                        help="changes of alpha_x, arcsec")
    args = parser.parse_args()
    prior = load_source_prior(args.prior)
    model, _, starts, sources = setup(args.system, prior, 1)
    core = GibbsCore.default(model.lens_model, prior, model, split_gibbs=SplitGibbsConfig(), num_warmup=1)
    t_floor = SplitGibbsConfig().t_final
    potential = jax.jit(lambda u, s: core.potential(u, s, model))
    values, source = starts[0], sources[0]
    u0 = core.space.unconstrain(values)
    base = float(potential(u0, source))
    pixel = float(prior.pixel_scale)
    print(f"\n{args.system}, the last draw of chain 0; source pixel {pixel}\"\n")
    print("| delta alpha_x (arcsec / pixels) | dU, source carried (+) | dU, wrong sign (-) | dU, source left | "
          "log prior ratio, shift path 1 / 2 / 8 nodes | straight path |")
    print("|---|---|---|---|---|---|")
    for delta in args.shifts:
        u1 = core.space.unconstrain({**values, "alpha_x": values["alpha_x"] + delta})
        carry = jnp.asarray([0.0, -delta / pixel])  # content moves by -delta: s'(x) = s(x + delta)
        d_plus = float(potential(u1, shifted(source, carry).astype(source.dtype))) - base
        d_minus = float(potential(u1, shifted(source, -carry).astype(source.dtype))) - base
        d_left = float(potential(u1, source)) - base
        ratios = [ratio_along_shift(prior.score, source, carry, t_floor, n) for n in (1, 2, 8)]
        straight = ratio_straight(prior.score, source, shifted(source, carry).astype(source.dtype), t_floor)
        print(f"| {delta:g} / {delta / pixel:.3f} | {d_plus:.1f} | {d_minus:.1f} | {d_left:.1f} | "
              f"{' / '.join(f'{r:.1f}' for r in ratios)} | {straight:.1f} |")
    post = az.from_netcdf(min(glob.glob(str(args.system / "*.nc")))).posterior
    names = core.space.names
    hess = np.asarray(jax.hessian(lambda u: core.potential(u, source, model))(u0), np.float64)
    jac = np.asarray(jax.jacfwd(lambda u: jnp.stack([core.lens_values(u)[n] for n in names]))(u0), np.float64)
    conditional = np.sqrt(np.diag(jac @ np.linalg.inv(hess) @ jac.T))
    ratios = {n: round(float(post[n].values[:, 200:].std() / c), 2) for n, c in zip(names, conditional, strict=True)}
    print(f"\nmarginal sd in the run / conditional sd given the source: {ratios}")
    roll = jnp.roll(source, 1, axis=1)
    print(f"\nwhole-pixel roll along x: log prior ratio {ratio_straight(prior.score, source, roll, t_floor, 16):.1f} "
          f"(straight path, 16 nodes), {ratio_along_shift(prior.score, source, jnp.asarray([0.0, 1.0]), t_floor, 8):.1f}"
          " (translation path, 8 nodes)")


if __name__ == "__main__":
    main()
