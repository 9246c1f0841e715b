"""Catalogue benchmark: wall time per lens for N simulated lenses, four ways (issue 16).

(a) one process per lens: ``blindlens sample`` in a fresh subprocess for each lens (as before
    ``blindlens catalogue``);
(b) one process, the lenses in sequence: ``run_catalogue(..., workers=0)`` (the prior is loaded
    once; JAX reuses whatever compiled programs it can);
(c) a vmap batch of all lenses: ``sample_observations_batch`` (the pure core; fixed-length HMC lens
    move, warm starts without the pre-fit; blindlens.batch_pipeline says what else differs);
(d) Dask: ``run_catalogue`` on a 2-worker LocalCluster (one lens per worker process at a time).

Compile time is counted separately: the seconds of XLA backend compilation
(``jax.monitoring`` event ``/jax/core/compile/backend_compile_duration``) summed over every
process of a mode. The lenses are ``blindlens simulate`` observations of the bundled lens and
source with noise seeds 0..N-1. Default (the issue's setting: 8 lenses of 96x96 at demo settings,
which takes hours on a 2-core CPU)::

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/catalogue.py --json /tmp/catalogue.json

``--quick``: 2 lenses of 32x32 at 0.1"/pixel with the smallest sampler settings (a few minutes;
a smoke test of the machinery, not a measurement of production runs). On a GPU, lenses per hour
against the batch size (the issue's 1, 8, 32, 128; the size that saturates the device)::

    .venv/bin/python benchmarks/catalogue.py --modes c --batch-sizes 1 8 32 128 --json /tmp/gpu_batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

DEMO = dict(chains=2, warmup=25, draws=25, steps=25, warm_start_steps=50, warm_start_tries=4, lens_prefit="none",
            supersampling=2, checkpoint_every=25)
QUICK = dict(chains=1, warmup=0, draws=2, steps=2, warm_start_steps=2, warm_start_tries=1, lens_prefit="none",
             supersampling=1, checkpoint_every=2)


# ------------------------------------------------------------------- compile-time bookkeeping


def _state() -> dict:
    """This process's compile counters (kept on ``sys``: these functions also run on Dask workers,
    where they arrive pickled by value with copies of this module's globals)."""
    return sys.__dict__.setdefault("_blindlens_benchmark_compile", {"seconds": 0.0, "count": 0})


def _listen() -> None:
    """Sum XLA compile seconds in this process (idempotent)."""
    state = _state()
    if state.get("listening"):
        return
    import jax

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            state["seconds"] += duration
            state["count"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    state["listening"] = True


def _compiled() -> dict:
    state = _state()
    return {"seconds": state["seconds"], "count": state["count"]}


def _single(argv) -> int:
    """``--single COMPILE_JSON -- <blindlens sample args>``: mode (a)'s subprocess."""
    _listen()
    from blindlens import cli

    code = cli.main(argv[1:])
    Path(argv[0]).write_text(json.dumps(_compiled()))
    return code


def _sample_argv(options: dict) -> list[str]:
    argv = []
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


# ------------------------------------------------------------------- the modes


def simulate(folder: Path, lenses: int, shape: int, pixel_scale: float) -> list[Path]:
    from blindlens import cli

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(lenses):
        path = folder / f"lens_{seed:02d}.fits"
        if not path.exists():
            assert cli.main(["simulate", "--out", str(path), "--image-shape", str(shape), str(shape),
                             "--pixel-scale", str(pixel_scale), "--psf-fwhm", str(2 * pixel_scale),
                             "--seed", str(seed)]) == 0
        paths.append(path)
    return paths


def mode_a(paths, out: Path, options: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    compile_s, t0 = 0.0, time.perf_counter()
    for path in paths:
        record = out / f"{path.stem}.compile.json"
        cmd = [sys.executable, __file__, "--single", str(record), "--", "sample", str(path), "--out",
               str(out / f"{path.stem}.nc"), *_sample_argv(options)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        compile_s += json.loads(record.read_text())["seconds"]
    return {"wall": time.perf_counter() - t0, "compile": compile_s}


def mode_b(paths, out: Path, options: dict) -> dict:
    from blindlens import SampleOptions, run_catalogue

    _listen()
    before = _compiled()["seconds"]
    t0 = time.perf_counter()
    table = run_catalogue([str(p) for p in paths], out, SampleOptions(**options), workers=0, progress=False)
    return {"wall": time.perf_counter() - t0, "compile": _compiled()["seconds"] - before,
            "statuses": table["status"].value_counts().to_dict()}


def mode_d(paths, out: Path, options: dict, workers: int = 2) -> dict:
    import logging

    from distributed import Client, LocalCluster

    from blindlens import SampleOptions, run_catalogue
    from blindlens.catalogue import worker_environment

    t0 = time.perf_counter()  # the cluster's start-up counts
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           env=worker_environment(workers), silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        client.run(_listen)
        table = run_catalogue([str(p) for p in paths], out, SampleOptions(**options), scheduler=client,
                              progress=False)
        compile_s = sum(c["seconds"] for c in client.run(_compiled).values())
    return {"wall": time.perf_counter() - t0, "compile": compile_s,
            "statuses": table["status"].value_counts().to_dict()}


def mode_c(paths, out: Path, options: dict, batch_size: int | None = None) -> dict:
    from blindlens import SampleOptions, sample_observations_batch

    _listen()
    before = _compiled()["seconds"]
    t0 = time.perf_counter()
    opts = {k: v for k, v in options.items() if k != "checkpoint_every"}
    sample_observations_batch(paths, out, SampleOptions(**opts), batch_size=batch_size or len(paths))
    return {"wall": time.perf_counter() - t0, "compile": _compiled()["seconds"] - before}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--single":
        rest = sys.argv[2:]
        return _single([rest[0], *rest[2:]])  # COMPILE_JSON -- args
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 lenses of 32x32, smallest settings (minutes)")
    parser.add_argument("--lenses", type=int, default=None, help="number of lenses (default 8; --quick: 2)")
    parser.add_argument("--modes", default="abcd", help="which modes to run (default abcd)")
    parser.add_argument("--workdir", default=None, help="keep observations and outputs here (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="mode (c) once per batch size (lenses lax.mapped in chunks of it; e.g. 1 8 32 128 on a "
                             "GPU: the size that saturates the device); --lenses defaults to the largest")
    args = parser.parse_args()
    if args.batch_sizes and min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be positive integers")
    lenses = args.lenses or (max(args.batch_sizes) if args.batch_sizes else (2 if args.quick else 8))
    shape, scale = (32, 0.1) if args.quick else (96, 0.05)
    options = QUICK if args.quick else DEMO
    work = Path(args.workdir or tempfile.mkdtemp(prefix="blindlens_catalogue_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    paths = simulate(work / "obs", lenses, shape, scale)
    runs = {"a": ("(a) one process per lens", mode_a), "b": ("(b) one process, in sequence", mode_b),
            "c": ("(c) vmap batch", mode_c), "d": ("(d) Dask, 2 workers", mode_d)}
    results = {}
    for key in args.modes:
        label, run = runs[key]
        if key == "c" and args.batch_sizes:
            for size in args.batch_sizes:
                print(f"{label}, batch size {size} ...", flush=True)
                results[f"{label}, batch {size}"] = run(paths, work / f"out_c{size}", options, batch_size=size)
            continue
        print(f"{label} ...", flush=True)
        results[label] = run(paths, work / f"out_{key}", options)
    base = results.get("(a) one process per lens")
    print(f"\n{lenses} lenses of {shape}x{shape} at {scale}\"/pixel; settings {options}; "
          f"{os.cpu_count()} CPU cores\n")
    print(f"{'mode':<32} {'wall [s]':>9} {'per lens [s]':>13} {'lenses / h':>11} {'compile [s]':>12} {'x vs (a)':>9}")
    for label, r in results.items():
        speed = f"{base['wall'] / r['wall']:.2f}" if base else "-"
        print(f"{label:<32} {r['wall']:9.1f} {r['wall'] / lenses:13.1f} {3600 * lenses / r['wall']:11.1f} "
              f"{r['compile']:12.1f} {speed:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps({"lenses": lenses, "shape": shape, "pixel_scale": scale,
                                               "options": options, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
