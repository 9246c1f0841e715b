"""Agreement of blindlens.lens_models with lenstronomy, and deflection throughput.

Usage::

    JAX_PLATFORMS=cpu .venv/bin/python scripts/lens_models_report.py [--repeats 200]

Prints two markdown tables (pasted into docs/lens_models.md):

1. max |difference| vs lenstronomy 1.14.2 (float64 oracle) at random parameters (numpy seed
   20251126) and 2000 random points with 0.1" <= r, in float64 and float32: deflection,
   potential (after removing the mean offset), Hessian and convergence.  For the SIE the
   Hessian/convergence oracle is lenstronomy's analytic EPL(gamma=2), because its SIE Hessian is
   a 1e-10 finite difference.
2. SIE + SHEAR deflection throughput on a 96x96 grid: lenstronomy (numpy, float64) vs our
   jitted deflection (float32 and float64), and our jitted value-and-gradient of
   sum(ray_shoot) w.r.t. the 7 lens parameters.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402

from blindlens.lens_models import EPL, SIE, SIS, ExternalShear, Multipole  # noqa: E402

SEED = 20251126
CLASSES = {"SIS": SIS, "SIE": SIE, "EPL": EPL, "SHEAR": ExternalShear, "MULTIPOLE": Multipole}


def _random_cases(rng):
    def ell():
        return dict(e1=rng.uniform(-0.3, 0.3), e2=rng.uniform(-0.3, 0.3))

    def cen():
        return dict(center_x=rng.uniform(-0.2, 0.2), center_y=rng.uniform(-0.2, 0.2))

    cases = [("SIS", dict(theta_E=rng.uniform(0.5, 2.0), **cen())),
             ("SIE", dict(theta_E=rng.uniform(0.5, 2.0), **ell(), **cen()))]
    for gamma in (1.6, 1.85, 2.0, 2.2, 2.4):
        cases.append(("EPL", dict(theta_E=rng.uniform(0.5, 2.0), gamma=gamma, **ell(), **cen())))
    cases.append(("SHEAR", dict(gamma1=rng.uniform(-0.1, 0.1), gamma2=rng.uniform(-0.1, 0.1),
                                ra_0=rng.uniform(-0.2, 0.2), dec_0=rng.uniform(-0.2, 0.2))))
    for m in (2, 3, 4):
        cases.append(("MULTIPOLE", dict(m=m, a_m=rng.uniform(0.0, 0.1),
                                        phi_m=rng.uniform(-np.pi, np.pi), **cen())))
    return cases


@eqx.filter_jit
def _evaluate(lens, x, y):
    return lens.deflection(x, y), lens.potential(x, y), lens.hessian(x, y), lens.convergence(x, y)


def agreement_table(n_points=2000):
    from lenstronomy.LensModel.lens_model import LensModel

    rows = []
    for dtype in (np.float64, np.float32):
        rng = np.random.default_rng(SEED)
        x = rng.uniform(-2.5, 2.5, 4 * n_points)
        y = rng.uniform(-2.5, 2.5, 4 * n_points)
        keep = np.hypot(x, y) > 0.4
        x = x[keep][:n_points].astype(dtype).astype(float)
        y = y[keep][:n_points].astype(dtype).astype(float)
        for name, kw in _random_cases(np.random.default_rng(SEED + 1)):
            kw = {k: (v if k == "m" else float(np.asarray(v, dtype))) for k, v in kw.items()}
            params = {k: (v if k == "m" else jnp.asarray(v, dtype)) for k, v in kw.items()}
            lens = CLASSES[name](**params)
            lm = LensModel([name])
            xj, yj = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
            (bx, by), psi, hess, kappa = _evaluate(lens, xj, yj)
            ax, ay = lm.alpha(x, y, [kw])
            d_alpha = max(np.max(np.abs(ax - bx)), np.max(np.abs(ay - by)))
            dpsi = lm.potential(x, y, [kw]) - np.asarray(psi, float)
            d_psi = np.max(np.abs(dpsi - dpsi.mean()))
            if name == "SIE":
                lm_h, kw_h = LensModel(["EPL"]), [dict(kw, gamma=2.0)]
            else:
                lm_h, kw_h = lm, [kw]
            h_ref = lm_h.hessian(x, y, kw_h)
            d_h = max(np.max(np.abs(a - np.asarray(b, float))) for a, b in zip(h_ref, hess))
            d_k = np.max(np.abs(lm_h.kappa(x, y, kw_h) - np.asarray(kappa, float)))
            label = name + (f" gamma={kw['gamma']:.2f}" if "gamma" in kw else "") + (
                f" m={kw['m']}" if "m" in kw else "")
            rows.append((label, np.dtype(dtype).name, d_alpha, d_psi, d_h, d_k))
    lines = ["| profile | dtype | max abs d alpha [\"] | max abs d psi (const removed) "
             "| max abs d hessian | max abs d kappa |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.1e} | {r[3]:.1e} | {r[4]:.1e} | {r[5]:.1e} |")
    return "\n".join(lines)


def _rate(fn, repeats):
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1.0 / np.median(times), np.median(times)


def throughput_table(repeats=200, n=96, pixel_scale=0.05):
    from lenstronomy.LensModel.lens_model import LensModel

    coords = (np.arange(n) - (n - 1) / 2) * pixel_scale
    xg, yg = np.meshgrid(coords, coords)
    kw = [dict(theta_E=1.2, e1=0.15, e2=-0.08, center_x=0.05, center_y=-0.03),
          dict(gamma1=0.03, gamma2=-0.02)]
    lm = LensModel(["SIE", "SHEAR"])
    xf, yf = xg.ravel(), yg.ravel()
    rows = [("lenstronomy LensModel(['SIE','SHEAR']).alpha, numpy float64",
             *_rate(lambda: lm.alpha(xf, yf, kw), repeats))]
    # guard against caching: a fresh theta_E every call
    fresh = iter(np.linspace(1.0, 1.4, 10 * repeats + 10))
    rows.append(("lenstronomy, SIE+SHEAR, new theta_E every call",
                 *_rate(lambda: lm.alpha(xf, yf, [dict(kw[0], theta_E=next(fresh)), kw[1]]),
                        repeats)))
    kw_epl = [dict(kw[0], gamma=2.1), kw[1]]
    lm_epl = LensModel(["EPL", "SHEAR"])
    rows.append(("lenstronomy LensModel(['EPL','SHEAR']).alpha (gamma=2.1), numpy float64",
                 *_rate(lambda: lm_epl.alpha(xf, yf, kw_epl), max(repeats // 10, 5))))

    for dtype in (jnp.float32, jnp.float64):
        x, y = jnp.asarray(xg, dtype), jnp.asarray(yg, dtype)
        lens = SIE(*[jnp.asarray(v, dtype) for v in kw[0].values()]) + ExternalShear(
            jnp.asarray(0.03, dtype), jnp.asarray(-0.02, dtype))
        defl = eqx.filter_jit(lambda lens, x, y: lens.deflection(x, y))
        rows.append((f"blindlens (SIE + ExternalShear).deflection, jit, {jnp.dtype(dtype).name}",
                     *_rate(lambda: jax.block_until_ready(defl(lens, x, y)), repeats)))
        vg = eqx.filter_jit(eqx.filter_value_and_grad(
            lambda lens, x, y: jnp.sum(sum(lens.ray_shoot(x, y)) ** 2)))
        rows.append((f"blindlens value_and_grad(sum ray_shoot^2) w.r.t. 7 lens params, jit, "
                     f"{jnp.dtype(dtype).name}",
                     *_rate(lambda: jax.block_until_ready(vg(lens, x, y)), repeats)))
        epl = EPL(*[jnp.asarray(v, dtype) for v in (1.2, 2.1, 0.15, -0.08, 0.05, -0.03)]) + \
            ExternalShear(jnp.asarray(0.03, dtype), jnp.asarray(-0.02, dtype))
        rows.append((f"blindlens (EPL + ExternalShear).deflection (gamma=2.1), jit, "
                     f"{jnp.dtype(dtype).name}",
                     *_rate(lambda: jax.block_until_ready(defl(epl, x, y)), repeats)))
        rows.append((f"blindlens EPL+shear value_and_grad w.r.t. 8 lens params, jit, "
                     f"{jnp.dtype(dtype).name}",
                     *_rate(lambda: jax.block_until_ready(vg(epl, x, y)), repeats)))
    lines = [f"| {n}x{n} grid, SIE + shear | calls/s | median ms |", "|---|---|---|"]
    for label, rate, med in rows:
        lines.append(f"| {label} | {rate:.0f} | {1e3 * med:.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    print(agreement_table())
    print()
    print(throughput_table(args.repeats))


if __name__ == "__main__":
    main()
