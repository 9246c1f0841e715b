"""Catalogues of lenses on Dask distributed: ``blindlens catalogue`` and :func:`run_catalogue`.

The lenses are read from INPUT (a folder, glob, CSV or observation file) by
:mod:`blindlens.catalogue_input` (:func:`read_catalogue`, :class:`LensEntry`, both re-exported here);
this module is the engine. Every lens is one idempotent task that runs the single-lens pipeline
(:func:`blindlens.pipeline.sample_observation`'s code) and writes, in the output folder ``DIR``:

``<name>.nc``
    The InferenceData (as ``blindlens sample`` writes it); ``<name>_summary.txt`` beside it.
``<name>.json``
    The lens's *record*, written last and atomically: its result fingerprint (the observation,
    lens-model, truth and prior by content, every sampling setting, the package version), the
    size of ``<name>.nc`` and its summary row. A rerun skips a lens whose record matches the
    current run (status ``ok`` or ``flagged``); anything else runs again.
``logs/<name>.log``
    What the pipeline printed for that lens (every attempt appended), with the traceback of a
    failure.

and ``summary.csv`` / ``summary.parquet`` with one row per lens (:data:`LEADING_COLUMNS`, then
``<parameter>_mean``, ``_sd``, ``_q16`` and ``_q84`` per lens parameter).

Failures are rows, never a crash of the run: an observation that cannot be read or a sampler
exception gives ``status == "error"`` with the error text; a run whose diagnostics fail
(:func:`blindlens.check_run`) is ``"flagged"`` with the warnings in ``flags``; a
``target_ess`` run stopped by ``max_minutes`` is ``"incomplete"`` (its checkpoint is kept, and a
rerun continues it). A worker that dies mid-lens (killed, out of memory, node lost) loses
nothing: the scheduler runs the lens again on another worker (up to Dask's
``distributed.scheduler.allowed-failures`` times, default 3), resuming from its checkpoint.

The engine is Dask distributed: a ``LocalCluster`` of worker processes (one thread each, so one
lens per process; the numerical libraries' thread counts are set per worker so that the workers
share the cores) or any running scheduler (``scheduler=``: an address, a scheduler file, a
``Client`` or a cluster object such as dask-jobqueue's ``SLURMCluster``). ``workers=0`` runs the
lenses in this process, one after the other, without Dask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import traceback
from pathlib import Path

from .catalogue_input import OBSERVATION_SUFFIXES, LensEntry, read_catalogue  # noqa: F401 (re-exported)
from .pipeline import DEFAULTS, SampleOptions, load_source_prior, result_fingerprint

__all__ = ["run_catalogue", "read_catalogue", "LensEntry", "LEADING_COLUMNS", "worker_environment"]

LEADING_COLUMNS = ("name", "status", "error", "observation", "netcdf", "num_chains", "num_draws", "max_rhat",
                   "min_ess", "chi2_per_pixel", "num_divergent", "flags", "wall_seconds", "cached")
"""The first columns of the summary table; then four columns per lens parameter."""

STATUSES = ("ok", "flagged", "incomplete", "error")
"""``ok``: diagnostics pass; ``flagged``: a diagnostic failed (``flags``); ``incomplete``: stopped
by ``max_minutes`` (rerun to continue); ``error``: no posterior (``error``)."""

_RECORD_VERSION = 1


# ----------------------------------------------------------------------------------- one lens


_PRIORS: dict = {}


def _with_resolved_prior(entry: LensEntry) -> LensEntry:
    """``entry`` with ``--prior auto`` replaced by the shipped prior its observation's pixel scale picks
    (the observation is read here; the finished-lens check and the workers then see a fixed prior)."""
    from .prior.score_prior import AUTO_PRIOR

    if not (isinstance(entry.options.prior, str) and entry.options.prior == AUTO_PRIOR):
        return entry
    from .io.observation import load_observation
    from .pipeline import observation_options, read_input, resolve_prior_spec

    options = entry.options
    obs = read_input("observation", entry.observation, load_observation, psf=options.psf, mask=options.mask,
                     **observation_options(options))
    return dataclasses.replace(entry, options=options.replace(prior=resolve_prior_spec(options.prior, obs)))


def _prior(spec):
    """The source prior of ``spec``, loaded once per process."""
    if not isinstance(spec, (str, Path)):
        return spec
    if spec not in _PRIORS:
        _PRIORS[spec] = load_source_prior(spec)
    return _PRIORS[spec]


def _json_safe(tree):
    return json.loads(json.dumps(tree, default=str))


def _record_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.json"


def _error_row(entry: LensEntry, err: BaseException | str, wall: float = 0.0) -> dict:
    if isinstance(err, BaseException):
        text = (str(err).strip().splitlines() or [""])[0][:300]
        err = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return {"name": entry.name, "status": "error", "error": err, "observation": entry.observation,
            "netcdf": None, "wall_seconds": float(wall), "cached": False}


def _posterior_row(idata, report) -> dict:
    import numpy as np

    row = {"num_chains": report.num_chains, "num_draws": report.num_draws, "max_rhat": report.max_rhat,
           "min_ess": report.min_ess, "chi2_per_pixel": report.chi2_per_pixel,
           "num_divergent": report.num_divergent, "flags": " | ".join(report.warnings)}
    for name in report.lens_parameters:
        draws = np.asarray(idata.posterior[name].values, float).ravel()
        draws = draws[np.isfinite(draws)]
        if draws.size == 0:
            continue
        row[f"{name}_mean"] = float(draws.mean())
        row[f"{name}_sd"] = float(draws.std(ddof=1)) if draws.size > 1 else 0.0
        row[f"{name}_q16"], row[f"{name}_q84"] = (float(q) for q in np.percentile(draws, [16, 84]))
    return _json_safe(row)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def process_lens(entry: LensEntry, out_dir, fingerprint: dict, prior=None) -> dict:
    """Run one lens and return its summary row; never raises for a failure of the lens itself.

    Writes ``<name>.nc``, ``<name>_summary.txt``, ``logs/<name>.log`` and, last, the record
    ``<name>.json`` (not for an error). ``prior``: the loaded source prior (default: loaded from
    ``entry.options.prior`` once per process).
    """
    from contextlib import redirect_stderr, redirect_stdout

    from . import pipeline

    out_dir = Path(out_dir)
    t0 = time.time()
    _record_path(out_dir, entry.name).unlink(missing_ok=True)  # a stale record must never outlive this run
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    log = out_dir / "logs" / f"{entry.name}.log"
    with open(log, "a") as stream:
        print(f"=== {entry.name}: {entry.observation} (attempt started {time.strftime('%Y-%m-%d %H:%M:%S')}, "
              f"host {os.uname().nodename}, pid {os.getpid()})", file=stream, flush=True)
        try:
            with redirect_stdout(stream), redirect_stderr(stream):
                options = entry.options
                idata, summary, run = pipeline._sample(
                    entry.observation, out_dir / f"{entry.name}.nc", options, progress=False, verbose=True,
                    figures=options.figures is not None,
                    prior=_prior(options.prior if prior is None else prior))
                report = pipeline.diagnose(idata, summary)
                print(str(report), flush=True)
        except Exception as err:  # the lens failed: a row, not a crash
            traceback.print_exc(file=stream)
            return _error_row(entry, err, time.time() - t0)
    status = "incomplete" if run.converged is False else ("ok" if report.ok else "flagged")
    return _record_lens(out_dir, entry, fingerprint, idata, report, status, time.time() - t0)


def _record_lens(out_dir: Path, entry: LensEntry, fingerprint: dict, idata, report, status: str, wall: float) -> dict:
    """The summary row of a finished lens, written (last, atomically) with its fingerprint as its record."""
    nc = out_dir / f"{entry.name}.nc"
    row = {"name": entry.name, "status": status, "error": None, "observation": entry.observation,
           "netcdf": str(nc), **_posterior_row(idata, report), "wall_seconds": float(wall), "cached": False}
    _write_atomic(_record_path(out_dir, entry.name),
                  json.dumps({"version": _RECORD_VERSION, "fingerprint": _json_safe(fingerprint),
                              "netcdf_size": nc.stat().st_size, "row": row}, indent=1))
    return row


BATCH_ENGINE = "pure Gibbs core, vectorised batch"
"""The ``engine`` entry of a batched lens's fingerprint (its draws are not the single-lens pipeline's)."""


def _options_key(options: SampleOptions) -> tuple:
    """Lenses with equal keys share every option, so they can run in one batch."""
    def part(value):
        return value if isinstance(value, (str, int, float, bool, tuple, type(None))) else ("object", id(value))

    return tuple((f.name, part(getattr(options, f.name))) for f in dataclasses.fields(options))


def _batches(todo, entries, batch_size: int) -> list:
    """``todo`` cut into batches of at most ``batch_size`` lenses with the same options, in catalogue
    order: ``[(items, first_index), ...]``, ``first_index`` the catalogue index of the batch's first lens."""
    index = {entry.name: i for i, entry in enumerate(entries)}
    groups: dict = {}
    for item in todo:
        groups.setdefault(_options_key(item[0].options), []).append(item)
    return [(items[k:k + batch_size], index[items[k][0].name])
            for items in groups.values() for k in range(0, len(items), batch_size)]


def process_batch(items, out_dir, prior=None, first_index: int = 0) -> dict:
    """Run lenses that share their options as one vectorised batch; their summary rows by name.

    :func:`~blindlens.batch_pipeline.sample_observations_batch` (the pure Gibbs core, lens ``i``
    keyed by ``first_index + i``) writes ``<name>.nc`` for each; each lens then gets its
    diagnostics, ``logs/<name>.log`` and its record (fingerprint with ``engine`` =
    :data:`BATCH_ENGINE`), exactly as :func:`process_lens` writes them. When the batch cannot run at
    all (an unreadable file, mixed image shapes, a sampler error) every lens of it is run on its own
    with :func:`process_lens`, so a bad observation is one error row and the others still finish.
    Never raises for a failure of the lenses themselves.
    """
    from contextlib import redirect_stderr, redirect_stdout

    from .batch_pipeline import sample_observations_batch
    from .results.run_diagnostics import check_run

    out_dir = Path(out_dir)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    entries = [entry for entry, _ in items]
    options = entries[0].options
    for entry in entries:  # unfinished lenses: a stale record or posterior must not outlive this run
        _record_path(out_dir, entry.name).unlink(missing_ok=True)
        (out_dir / f"{entry.name}.nc").unlink(missing_ok=True)
    log = out_dir / "logs" / f"batch_{entries[0].name}.log"
    t0 = time.time()
    try:
        with open(log, "a") as stream, redirect_stdout(stream), redirect_stderr(stream):
            print(f"=== batch of {len(entries)} from {entries[0].name} (index {first_index}), started "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}, host {os.uname().nodename}, pid {os.getpid()}", flush=True)
            idatas = sample_observations_batch(
                [entry.observation for entry in entries], out_dir, options, batch_size=len(entries),
                prior=_prior(options.prior if prior is None else prior), first_index=first_index,
                names=[entry.name for entry in entries])
    except Exception:
        with open(log, "a") as stream:
            traceback.print_exc(file=stream)
            print("the batch could not run: each lens runs on its own (with the single-lens pipeline)", file=stream)
        return {entry.name: process_lens(entry, out_dir, {k: v for k, v in fp.items() if k != "engine"}, prior)
                for entry, fp in items}
    wall = (time.time() - t0) / len(entries)
    rows = {}
    for (entry, fingerprint), idata in zip(items, idatas):
        report = check_run(idata, warn=False)
        with open(out_dir / "logs" / f"{entry.name}.log", "a") as stream:
            print(f"=== {entry.name}: {entry.observation}, run in the batch logged in {log.name}\n{report}",
                  file=stream, flush=True)
        rows[entry.name] = _record_lens(out_dir, entry, fingerprint, idata, report,
                                        "ok" if report.ok else "flagged", wall)
    return rows


def _finished_row(out_dir: Path, name: str, fingerprint: dict) -> dict | None:
    """The recorded row of a lens finished by a run with this fingerprint, else ``None``."""
    try:
        record = json.loads(_record_path(out_dir, name).read_text())
        nc = out_dir / f"{name}.nc"
        if (record.get("version") == _RECORD_VERSION and record["fingerprint"] == _json_safe(fingerprint)
                and record["row"]["status"] in ("ok", "flagged") and nc.stat().st_size == record["netcdf_size"]):
            return {**record["row"], "cached": True}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


# ----------------------------------------------------------------------------------- the engine


def worker_environment(workers: int, cores: int | None = None) -> dict[str, str]:
    """Environment of each LocalCluster worker: the cores shared out, so workers do not oversubscribe.

    ``OMP/MKL/OPENBLAS_NUM_THREADS`` = cores per worker; with one core per worker XLA's CPU
    backend is kept single-threaded (``--xla_cpu_multi_thread_eigen=false`` added to ``XLA_FLAGS``)
    and JAX does not preallocate GPU memory (several workers can share a GPU).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, workers))
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    if flags:
        env["XLA_FLAGS"] = flags
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false"))
    return env


@contextlib.contextmanager
def _client(workers: int, scheduler):
    import logging

    from distributed import Client, LocalCluster

    if scheduler is None:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          env=worker_environment(workers), silence_logs=logging.ERROR) as cluster:
            with Client(cluster) as client:
                yield client
    elif isinstance(scheduler, Client):
        yield scheduler
    elif hasattr(scheduler, "scheduler_address"):  # a cluster object (LocalCluster, SLURMCluster ...)
        with Client(scheduler) as client:
            yield client
    elif str(scheduler).endswith(".json"):
        with Client(scheduler_file=str(scheduler)) as client:
            yield client
    else:
        with Client(str(scheduler)) as client:
            yield client


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="lens", desc="lenses", disable=not enabled, smoothing=0.1)


def _summary_table(rows: list[dict]):
    import pandas as pd

    table = pd.DataFrame(rows)
    for column in LEADING_COLUMNS:
        if column not in table:
            table[column] = None
    params = [c for c in table.columns if c not in LEADING_COLUMNS]
    table = table[list(LEADING_COLUMNS) + params]
    for column in ("max_rhat", "min_ess", "chi2_per_pixel", "wall_seconds", *params):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    for column in ("num_chains", "num_draws", "num_divergent"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    table["cached"] = table["cached"].fillna(False).astype(bool)
    for column in ("name", "status", "error", "observation", "netcdf", "flags"):
        table[column] = table[column].astype("string")
    return table


def _write_summary(table, out_dir: Path) -> None:
    for name, write in (("summary.csv", lambda p: table.to_csv(p, index=False)),
                        ("summary.parquet", lambda p: table.to_parquet(p, index=False))):
        tmp = out_dir / (name + ".tmp")
        write(tmp)
        tmp.replace(out_dir / name)


def run_catalogue(inputs, out_dir, options: SampleOptions | None = None, *, workers: int = 2, scheduler=None,
                  progress: bool = True, batch_size: int | None = None):
    """Model every lens of a catalogue; returns the summary table (a ``pandas.DataFrame``).

    Parameters
    ----------
    inputs
        A directory, glob, CSV or observation file, or a list of them (:func:`read_catalogue`).
    out_dir
        Output folder (created): one ``<name>.nc`` per lens, ``summary.csv``, ``summary.parquet``.
    options
        The sampling options of every lens (:class:`~blindlens.pipeline.SampleOptions`; CSV
        columns override them per lens). ``options.figures``: also write each lens's figures there.
    workers
        Worker processes of the LocalCluster started for the run (one lens at a time each);
        ``0``: run the lenses in this process, one after the other. Ignored with ``scheduler``.
    scheduler
        Join a running Dask cluster instead: its address (``tcp://host:8786``), scheduler file
        (``.json``), a ``distributed.Client`` or a cluster object (e.g. ``SLURMCluster``). The
        workers must have blindlens installed and see the input and output paths.
    progress
        A progress bar over lenses with an ETA (stderr).
    batch_size
        Run the lenses ``batch_size`` at a time (those with the same options) in one compiled,
        vectorised program (:func:`process_batch`; the pure Gibbs core) instead of one single-lens
        pipeline each. ``None`` (default): one lens per task.

    Finished lenses (a matching record, see the module docstring) are skipped, so rerunning the
    same call after an interruption only runs what is left; a rerun also retries failed lenses.
    """
    options = DEFAULTS if options is None else options
    options.validate()
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}.")
    from .io.run_checkpoint import check_output_dir

    out_dir = check_output_dir("--out", out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = read_catalogue(inputs, options)
    rows: dict[str, dict] = {}
    todo = []
    for entry in entries:
        try:
            entry.options.validate()
            entry = _with_resolved_prior(entry)
            fingerprint = result_fingerprint(entry.observation, entry.options, _prior(entry.options.prior))
            if batch_size is not None:  # another sampler: its records are not the single-lens pipeline's
                fingerprint["engine"] = BATCH_ENGINE
        except Exception as err:  # a missing observation or lens-model file, a bad per-lens option
            rows[entry.name] = _error_row(entry, err)
            continue
        row = _finished_row(out_dir, entry.name, fingerprint)
        if row is not None:
            rows[entry.name] = row
        else:
            todo.append((entry, fingerprint))
    bar = _progress(len(entries), len(entries) - len(todo), progress)
    tasks = _batches(todo, entries, batch_size) if batch_size is not None else todo
    try:
        if tasks and workers == 0 and scheduler is None:
            for task in tasks:
                if batch_size is None:
                    entry, fingerprint = task
                    rows[entry.name] = process_lens(entry, out_dir, fingerprint, _prior(entry.options.prior))
                    bar.update()
                else:
                    items, first = task
                    rows.update(process_batch(items, out_dir, _prior(items[0][0].options.prior), first))
                    bar.update(len(items))
        elif tasks:
            rows.update(_run_on_dask(tasks, out_dir, workers, scheduler, bar, batched=batch_size is not None))
    finally:
        bar.close()
    table = _summary_table([rows[e.name] for e in entries])
    _write_summary(table, out_dir)
    return table


def _run_on_dask(tasks, out_dir: Path, workers: int, scheduler, bar, *, batched: bool = False) -> dict:
    """Submit one task per lens (``(entry, fingerprint)``) or, ``batched``, per batch
    (``(items, first_index)``, :func:`process_batch`); the rows by lens name."""
    from dask.base import tokenize
    from distributed import as_completed

    rows = {}
    with _client(workers, scheduler) as client:
        priors = {}  # prior objects (not specs) are sent once, not with every lens

        def sent(prior):
            if isinstance(prior, (str, Path)):
                return None  # each worker loads (and keeps) the prior it names
            if id(prior) not in priors:
                priors[id(prior)] = client.scatter(prior, broadcast=True, hash=False)
            return priors[id(prior)]

        futures = {}
        for task in tasks:
            if batched:
                items, first = task
                entries = [entry for entry, _ in items]
                future = client.submit(process_batch, items, str(out_dir), sent(entries[0].options.prior), first,
                                       pure=False, key=f"blindlens-batch-{entries[0].name}-{tokenize(items)}")
            else:
                entry, fingerprint = task
                entries = [entry]
                future = client.submit(process_lens, entry, str(out_dir), fingerprint, sent(entry.options.prior),
                                       pure=False, key=f"blindlens-lens-{entry.name}-{tokenize(fingerprint)}")
            futures[future] = entries
        for future in as_completed(futures):
            entries = futures[future]
            try:
                result = future.result()
                rows.update(result if batched else {entries[0].name: result})
            except Exception as err:  # e.g. KilledWorker: the task killed its worker every time
                rows.update({entry.name: _error_row(entry, err) for entry in entries})
            bar.update(len(entries))
    return rows
