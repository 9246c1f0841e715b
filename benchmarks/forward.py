"""Forward-model benchmark: blindlens vs lenstronomy (and herculens when importable), interleaved.

Setup (``research/perf-anchors.md`` section 2): SIE (theta_E = 1.2", q = 0.7, PA 30 deg, centre
(0.05, -0.03)) + external shear (0.03, -0.02); 64 x 64 source at 0.05"/pix (Sersic-like body plus
two Gaussian clumps, tapered to exactly 0 at the edge, peak 1); Gaussian PSF FWHM 0.1" on +-0.2";
images 96 x 96 at 0.05" and 192 x 192 at 0.025"; one ray per pixel; float32 (lenstronomy: float64).
chi^2 = sum((model - data)^2) / sigma^2, sigma = 0.01; 7 lens parameters
(theta_E, e1, e2, center_x, center_y, gamma1, gamma2); batch of 32 scattered lens vectors.

Every case is timed round-robin in one process (``--rounds`` rounds, about ``--seconds`` of
back-to-back calls per case per round); ratios are computed within each round and the median is
reported. Run::

    .venv/bin/python benchmarks/forward.py                   # blindlens vs lenstronomy
    /tmp/hvenv/bin/python benchmarks/forward.py              # + herculens, from a scratch venv

herculens 0.3.0 needs a ``jnp.clip(a_min=, a_max=)`` shim on jax 0.10 (applied below, only when
herculens imports); it is never installed into the project venv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

TRUTH = np.array([1.2, 0.088235, 0.152828, 0.05, -0.03, 0.03, -0.02])
NAMES = ("theta_E", "e1", "e2", "center_x", "center_y", "gamma1", "gamma2")
SOURCE_N, SOURCE_SCALE, FWHM, SIGMA = 64, 0.05, 0.1, 0.01


def make_source() -> np.ndarray:
    """Sersic-like ellipse (n = 1.5, R_e = 0.28", q = 0.75, PA -20 deg) + two clumps, tapered to 0."""
    xs = (np.arange(SOURCE_N) - (SOURCE_N - 1) / 2) * SOURCE_SCALE
    x, y = np.meshgrid(xs, xs)
    pa = np.deg2rad(-20.0)
    dx, dy = x - 0.08, y - 0.04
    xr = np.cos(pa) * dx + np.sin(pa) * dy
    yr = -np.sin(pa) * dx + np.cos(pa) * dy
    r = np.sqrt(0.75 * xr**2 + yr**2 / 0.75)
    n, re = 1.5, 0.28
    bn = 2 * n - 1 / 3 + 0.009876 / n
    body = np.exp(-bn * ((r / re) ** (1 / n) - 1))
    clump1 = 0.8 * np.exp(-((x + 0.35) ** 2 + (y - 0.25) ** 2) / (2 * 0.07**2)) * body.max()
    clump2 = 0.5 * np.exp(-((x - 0.4) ** 2 + (y + 0.3) ** 2) / (2 * 0.09**2)) * body.max()
    rr = np.hypot(x, y)
    taper = np.clip(1 - (rr / 1.55) ** 4, 0, None) ** 2
    src = (body + clump1 + clump2) * taper
    return src / src.max()


def batch_params(n=32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spread = np.array([0.05, 0.03, 0.03, 0.02, 0.02, 0.01, 0.01])
    return TRUTH + rng.uniform(-1, 1, size=(n, 7)) * spread


# ------------------------------------------------------------------------------ blindlens


def blindlens_cases(n_pix, src, data):
    from blindlens.grid import PixelGrid
    from blindlens.lens_models import SIE, ExternalShear
    from blindlens.lensing_operator import LensingOperator
    from blindlens.psf import PSF, gaussian_psf

    d = 4.8 / n_pix
    image_grid = PixelGrid((n_pix, n_pix), d)
    source_grid = PixelGrid((SOURCE_N, SOURCE_N), SOURCE_SCALE)
    psf = PSF(gaussian_psf(FWHM, d), image_grid.shape)

    def forward(p, s):
        lens = SIE(theta_E=p[0], e1=p[1], e2=p[2], center_x=p[3], center_y=p[4]) + ExternalShear(
            gamma1=p[5], gamma2=p[6]
        )
        return LensingOperator(lens, image_grid, source_grid, psf=psf)(s)

    data = jnp.asarray(data, jnp.float32)

    def chi2(p, s):
        return jnp.sum((forward(p, s) - data) ** 2) / SIGMA**2

    p0 = jnp.asarray(TRUTH, jnp.float32)
    s0 = jnp.asarray(src, jnp.float32)
    pb = jnp.asarray(batch_params(), jnp.float32)
    def adjoint(p, y):
        lens = SIE(theta_E=p[0], e1=p[1], e2=p[2], center_x=p[3], center_y=p[4]) + ExternalShear(
            gamma1=p[5], gamma2=p[6]
        )
        return LensingOperator(lens, image_grid, source_grid, psf=psf).adjoint(y)

    def diag_aat(p):
        lens = SIE(theta_E=p[0], e1=p[1], e2=p[2], center_x=p[3], center_y=p[4]) + ExternalShear(
            gamma1=p[5], gamma2=p[6]
        )
        return LensingOperator(lens, image_grid, source_grid, psf=psf).diag_aat()

    fns = {
        "forward": (jax.jit(forward), (p0, s0)),
        "batch32": (jax.jit(jax.vmap(forward, (0, None))), (pb, s0)),
        "grad_lens": (jax.jit(jax.grad(chi2, 0)), (p0, s0)),
        "grad_source": (jax.jit(jax.grad(chi2, 1)), (p0, s0)),
        "adjoint": (jax.jit(adjoint), (p0, data)),
    }
    diag_fn = jax.jit(diag_aat)
    jax.block_until_ready(diag_fn(p0))
    diag_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(diag_fn(p0))
        diag_times.append(time.perf_counter() - t0)
    compile_s = {}
    for name, (fn, args) in fns.items():
        t0 = time.perf_counter()
        lowered = fn.lower(*args)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        compile_s[name] = (t1 - t0, t2 - t1)
    cases = {name: (lambda fn=fn, args=args: fn(*args)) for name, (fn, args) in fns.items()}
    model = np.asarray(fns["forward"][0](p0, s0), np.float64)
    compile_s["diag_aat run time (median of 3)"] = (0.0, statistics.median(diag_times))
    return cases, compile_s, model


# ---------------------------------------------------------------------------- lenstronomy


def lenstronomy_case(n_pix, src):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    from blindlens.psf import gaussian_psf

    d = 4.8 / n_pix
    data = ImageData(
        image_data=np.zeros((n_pix, n_pix)), transform_pix2angle=np.diag([d, d]),
        ra_at_xy_0=-(n_pix - 1) / 2 * d, dec_at_xy_0=-(n_pix - 1) / 2 * d,
    )
    model = ImageModel(
        data, PSF(psf_type="PIXEL", kernel_point_source=gaussian_psf(FWHM, d)),
        lens_model_class=LensModel(["SIE", "SHEAR"]), source_model_class=LightModel(["INTERPOL"]),
        kwargs_numerics={"supersampling_factor": 1},
    )
    kw_lens = [dict(zip(NAMES[:5], TRUTH[:5])), dict(gamma1=TRUTH[5], gamma2=TRUTH[6], ra_0=0.0, dec_0=0.0)]
    kw_src = [dict(image=src, amp=1.0, center_x=0.0, center_y=0.0, phi_G=0.0, scale=SOURCE_SCALE)]

    def run():
        return model.image(kwargs_lens=kw_lens, kwargs_source=kw_src)

    return run, run() / d**2


# ------------------------------------------------------------------------------ herculens


def herculens_cases(n_pix, src, data):
    import jax.numpy as jnp_

    original_clip = jnp_.clip

    def clip(a, a_min=None, a_max=None, *, min=None, max=None, **kw):  # jax 0.10 removed a_min/a_max
        return original_clip(a, a_min if min is None else min, a_max if max is None else max, **kw)

    jnp_.clip = clip
    try:
        from herculens.Coordinates.pixel_grid import PixelGrid as HGrid
        from herculens.Instrument.noise import Noise
        from herculens.Instrument.psf import PSF as HPSF
        from herculens.LensImage.lens_image import LensImage
        from herculens.LightModel.light_model import LightModel as HLight
        from herculens.MassModel.mass_model import MassModel
    except Exception as err:  # noqa: BLE001 - report any failure and carry on without herculens
        return None, f"herculens unavailable: {type(err).__name__}: {err}"
    from blindlens.psf import gaussian_psf

    d = 4.8 / n_pix
    grid = HGrid(n_pix, n_pix, transform_pix2angle=np.diag([d, d]),
                 ra_at_xy_0=-(n_pix - 1) / 2 * d, dec_at_xy_0=-(n_pix - 1) / 2 * d)
    image = LensImage(
        grid, HPSF(psf_type="PIXEL", kernel_point_source=gaussian_psf(FWHM, d)),
        noise_class=Noise(n_pix, n_pix, noise_map=np.full((n_pix, n_pix), SIGMA)),
        lens_mass_model_class=MassModel(["SIE", "SHEAR"]),
        source_model_class=HLight(["PIXELATED"], kwargs_pixelated={
            "num_pixels": SOURCE_N, "grid_center": (0.0, 0.0), "grid_shape": (3.2, 3.2)}),
        kwargs_numerics={"supersampling_factor": 1},
    )

    def forward(p, s):
        kw_lens = [dict(theta_E=p[0], e1=p[1], e2=p[2], center_x=p[3], center_y=p[4]),
                   dict(gamma1=p[5], gamma2=p[6], ra_0=0.0, dec_0=0.0)]
        return image.model(kwargs_lens=kw_lens, kwargs_source=[{"pixels": s}])

    data = jnp.asarray(data, jnp.float32)

    def chi2(p, s):
        return jnp.sum((forward(p, s) - data) ** 2) / SIGMA**2

    p0 = jnp.asarray(TRUTH, jnp.float32)
    s0 = jnp.asarray(src, jnp.float32)
    pb = jnp.asarray(batch_params(), jnp.float32)
    fns = {
        "forward": (jax.jit(forward), (p0, s0)),
        "batch32": (jax.jit(jax.vmap(forward, (0, None))), (pb, s0)),
        "grad_lens": (jax.jit(jax.grad(chi2, 0)), (p0, s0)),
        "grad_source": (jax.jit(jax.grad(chi2, 1)), (p0, s0)),
    }
    for fn, args in fns.values():
        jax.block_until_ready(fn(*args))
    model = np.asarray(fns["forward"][0](p0, s0), np.float64)
    cases = {name: (lambda fn=fn, args=args: fn(*args)) for name, (fn, args) in fns.items()}
    return cases, model


# ------------------------------------------------------------------------------ timing


def rate(fn, seconds):
    jax.block_until_ready(fn())
    count, t0 = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn())
        count += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return count / elapsed


def import_time(module, repeats=5):
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                  check=True).stdout) for _ in range(repeats + 1)]
    return statistics.median(times[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 192])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.15, help="timing window per case per round")
    parser.add_argument("--json", default=None, help="write raw results here")
    parser.add_argument("--no-herculens", action="store_true")
    args = parser.parse_args(argv)

    src = make_source()
    results = {"load_avg_start": os.getloadavg(), "sizes": {}}
    results["import_blindlens_s"] = import_time("blindlens")
    results["import_blindlens_operator_s"] = import_time("blindlens.lensing_operator")
    herculens_note = None
    for n_pix in args.sizes:
        lt_run, lt_image = lenstronomy_case(n_pix, src)
        rng = np.random.default_rng(1)
        data = lt_image + SIGMA * rng.normal(size=lt_image.shape)
        bl_cases, compile_s, bl_model = blindlens_cases(n_pix, src, data)
        cases = {"lenstronomy forward": (lt_run, 1)}
        cases.update({f"blindlens {k}": (fn, 32 if k == "batch32" else 1) for k, fn in bl_cases.items()})
        accuracy = {"blindlens_vs_lenstronomy_max_over_peak": float(np.abs(bl_model - lt_image).max() / lt_image.max())}
        if not args.no_herculens:
            h_cases, h_model = herculens_cases(n_pix, src, data)
            if h_cases is None:
                herculens_note = h_model
            else:
                cases.update({f"herculens {k}": (fn, 32 if k == "batch32" else 1) for k, fn in h_cases.items()})
                accuracy["herculens_vs_lenstronomy_max_over_peak"] = float(
                    np.abs(h_model - lt_image).max() / lt_image.max())
        rounds = {name: [] for name in cases}
        loads = []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name, (fn, mult) in cases.items():
                rounds[name].append(mult * rate(fn, args.seconds))
        results["sizes"][n_pix] = {"rates": rounds, "compile_s": compile_s, "accuracy": accuracy,
                                   "load_avg_1min": loads}
        print_size(n_pix, rounds, compile_s, accuracy, loads)
    print(f"\nimport blindlens: {results['import_blindlens_s']:.2f} s; "
          f"import blindlens.lensing_operator: {results['import_blindlens_operator_s']:.2f} s "
          "(median of 5 fresh interpreters)")
    if herculens_note:
        print(herculens_note)
        results["herculens_note"] = herculens_note
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _median_ratio(a, b):
    return statistics.median(x / y for x, y in zip(a, b))


def print_size(n_pix, rounds, compile_s, accuracy, loads):
    def cell(v):
        return f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"

    print(f"\n### {n_pix}x{n_pix} (load average {min(loads):.1f}-{max(loads):.1f})\n")
    print("| case | evaluations/s (batch: images/s), median (min-max) |\n|---|---|")
    for name, v in rounds.items():
        print(f"| {name} | {cell(v)} |")
    lt = rounds["lenstronomy forward"]
    fwd = rounds["blindlens forward"]
    print("\n| ratio (median of per-round ratios) | value |\n|---|---|")
    print(f"| blindlens forward / lenstronomy forward | {_median_ratio(fwd, lt):.2f}x |")
    print(f"| blindlens batch-32 throughput / blindlens single | {_median_ratio(rounds['blindlens batch32'], fwd):.2f}x |")
    print(f"| blindlens batch-32 throughput / lenstronomy | {_median_ratio(rounds['blindlens batch32'], lt):.2f}x |")
    for g in ("grad_lens", "grad_source"):
        print(f"| cost of one {g} / one forward | {_median_ratio(fwd, rounds[f'blindlens {g}']):.2f}x |")
    fd = [x / 8 for x in lt]
    print(f"| blindlens grad_lens / lenstronomy finite-difference gradient (8 forwards) | "
          f"{_median_ratio(rounds['blindlens grad_lens'], fd):.1f}x |")
    if "herculens forward" in rounds:
        for k in ("forward", "batch32", "grad_lens", "grad_source"):
            print(f"| blindlens {k} / herculens {k} | {_median_ratio(rounds[f'blindlens {k}'], rounds[f'herculens {k}']):.2f}x |")
    print("\n| compile (trace+lower, XLA compile) | seconds |\n|---|---|")
    for name, (a, b) in compile_s.items():
        if name.startswith("diag"):
            print(f"| {name} (not a compile time) | {b:.3f} |")
        else:
            print(f"| {name} | {a:.2f} + {b:.2f} = {a + b:.2f} |")
    for k, v in accuracy.items():
        print(f"\naccuracy {k}: {v:.2e}")


if __name__ == "__main__":
    main()
