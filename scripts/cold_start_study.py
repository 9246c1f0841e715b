"""Cold-start study on lenstronomy simulations (issue 14), run exactly as a user runs blindlens.

For every system ``i`` of ``--systems``: simulate it with lenstronomy (``lenstronomy_systems.py``:
held-out galaxy at 0.05"/pixel, SIE + shear, 96 x 96 at 0.05", PSF FWHM 0.1", supersampling 3, peak
SNR 25-77) into ``<work>/<name>/system_<i>/``, then run the user's command as a subprocess::

    blindlens sample obs.fits --out post.nc --truth truth.npz [--prior P] [--warmup N] [--draws N] [--chains N]

from a cold start (the true lens is never passed; ``--truth`` only overlays it on the figures). Options
not given here are not passed, so the CLI's own defaults apply (``blindlens sample --help``);
``--sample-args "..."`` appends further CLI options verbatim. One JSON line per system goes to
``docs/calibration/<name>.jsonl`` (resumable: systems already there are skipped, and an interrupted
system resumes from the CLI's own checkpoint in its folder): lens truth (with ``--lens-light`` also the
deflector light's, in the posterior's units, reported as its own table); posterior mean, sd and
``z = (mean - truth) / sd`` per lens parameter over all chains (what a user would report) and over the
dominant-mode chains; central 68/95% interval coverage; per-chain mean residual chi^2/N; which chains
are in the dominant mode (chain chi^2/N within ``--mode-tol`` of the best chain's); max split R-hat
(rank-normalised, computed here, and the CLI's own printed value); the true lens and source's own
chi^2/N; warnings the CLI printed; thinned lens draws (for TARP); wall time.

``--report`` reads the JSONL and writes ``docs/calibration/<name>_tables.md``: a per-system table and,
over systems, mean z, sd of z, 68/95% coverage with binomial errors, TARP, the fraction of systems with
every chain in the dominant mode, and chi^2/N minus the truth's, against the issue-14 goals.

Commands (see docs/joint_inference.md)::

    .venv/bin/python scripts/cold_start_study.py --systems 0:30 --population broad --name cold_start_broad
    .venv/bin/python scripts/cold_start_study.py --report --name cold_start_broad
"""

from __future__ import annotations

import os

_USER_ENV = dict(os.environ)  # the CLI runs in the user's environment (GPU if they have one)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process only simulates

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lenstronomy_systems import (  # noqa: E402
    LENS_RANGES,
    PIXEL_SCALE,
    POPULATIONS,
    mirror_system,
    simulate_system,
    write_system,
)

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "docs" / "calibration"
MAX_STORED_DRAWS = 256
_LOCK = threading.Lock()


# ------------------------------------------------------------------------------ reading a posterior


def _open_group(path, group):
    import xarray as xr

    try:
        return xr.open_dataset(path, group=group)
    except (OSError, KeyError, ValueError):
        return None


def nuisance_sites(names, stored) -> list[str]:
    """The nuisance sites among ``names``: the posterior's ``blindlens_nuisance_sites``, or (runs
    written before that attribute existed) the source grid placement's sites."""
    from blindlens.inference.source_shift_model import SOURCE_SHIFT_SITES

    listed = json.loads(stored) if stored else SOURCE_SHIFT_SITES
    return [n for n in names if n in listed]


def lens_max_rhat(record: dict) -> float:
    """Max split R-hat of a study line over its lens parameters, nuisance sites left out."""
    nuisance = record.get("nuisance_params") or nuisance_sites(record["lens_params"], None)
    rhats = [record["params"][n]["rhat"] for n in record["lens_params"] if n not in nuisance]
    return float(np.nanmax(rhats)) if np.any(np.isfinite(rhats)) else float("nan")


def split_rhat(x) -> float:
    """Rank-normalised split R-hat (max of bulk and folded; Vehtari et al. 2021) of ``(chain, draw)``."""
    from blindlens.inference.mixing_diagnostics import rank_normalized_split_rhat

    return rank_normalized_split_rhat(x)


def draw_chi2(path) -> tuple[np.ndarray, str]:
    """Residual chi^2/N per draw ``(chain, draw)`` and where it came from.

    A stored statistic (a ``(chain, draw)`` variable whose name contains ``chi2`` in ``sample_stats``
    or ``posterior``) is used if the file has one; otherwise it is recomputed like
    ``blindlens.arviz_conversion.residual_chi2`` from ``posterior_predictive/normalized_residual``
    (NaN on masked pixels), one chain at a time.
    """
    for group in ("sample_stats", "posterior"):
        ds = _open_group(path, group)
        if ds is None:
            continue
        with ds:
            for name, var in ds.data_vars.items():
                if "chi2" in name.lower() and var.dims == ("chain", "draw"):
                    return np.asarray(var.values, float), f"{group}/{name}"
    pp = _open_group(path, "posterior_predictive")
    if pp is None or "normalized_residual" not in pp:
        raise ValueError(f"{path} has no chi^2 statistic and no posterior_predictive/normalized_residual.")
    with pp:
        r = pp["normalized_residual"]
        out = []
        for c in range(r.sizes["chain"]):
            rc = np.asarray(r.isel(chain=c).values, float)
            n = max(int(np.isfinite(rc[0]).sum()), 1)
            out.append(np.nansum(rc**2, axis=(-2, -1)) / n)
    return np.stack(out), "posterior_predictive/normalized_residual"


LIGHT_PREFIX = "lens_light_"


def light_truth(lens_light: dict | None) -> dict:
    """The deflector light's truth under the posterior's site names (``lens_light_amp``, ...).

    The simulation's ``SERSIC_ELLIPSE`` amplitude is lenstronomy's (flux per pixel); blindlens's sites
    are in the study's surface-brightness units, amp / d^2 (``lenstronomy_systems.blindlens_lens``).
    """
    if not lens_light:
        return {}
    out = {LIGHT_PREFIX + k: float(v) for k, v in lens_light.items()}
    out[LIGHT_PREFIX + "amp"] /= PIXEL_SCALE**2
    return out


def analyse(post_path, truth: dict, true_chi2: float, mode_tol: float) -> dict:
    """Per-system numbers of one ``blindlens sample`` output (see the module docstring)."""
    post = _open_group(post_path, "posterior")
    if post is None:
        raise ValueError(f"{post_path} has no posterior group.")
    with post:
        stored = post.attrs.get("blindlens_lens_sites")
        names = json.loads(stored) if stored else [k for k, v in post.data_vars.items() if v.dims == ("chain", "draw")]
        nuisance = nuisance_sites(names, post.attrs.get("blindlens_nuisance_sites"))
        draws = {n: np.asarray(post[n].values, float) for n in names}
        extra = post.attrs.get("extra_warmup_sweeps")  # sweeps discarded while chains settled (newer runs)
    chi2, chi2_from = draw_chi2(post_path)
    n_chain = chi2.shape[0]
    chain_chi2 = chi2.mean(axis=1)
    best = float(np.nanmin(chain_chi2))
    dominant = [int(c) for c in range(n_chain) if chain_chi2[c] - best <= mode_tol]
    params = {}
    for n in names:
        x = draws[n]
        rec = {"rhat": split_rhat(x)}
        for tag, sel in (("", slice(None)), ("dom_", dominant)):
            v = x[sel].reshape(-1)
            mean, sd = float(v.mean()), float(v.std())
            rec[tag + "mean"], rec[tag + "sd"] = mean, sd
            if n in truth:
                t = truth[n]
                rec[tag + "z"] = (mean - t) / sd if sd > 0 else float("nan")
                q = np.quantile(v, [0.025, 0.16, 0.84, 0.975])
                rec[tag + "in68"] = bool(q[1] <= t <= q[2])
                rec[tag + "in95"] = bool(q[0] <= t <= q[3])
        rec["chain_means"] = [float(m) for m in x.mean(axis=1)]
        params[n] = rec
    flat = np.stack([draws[n].reshape(-1) for n in names], axis=1)
    keep = np.unique(np.linspace(0, flat.shape[0] - 1, min(MAX_STORED_DRAWS, flat.shape[0])).astype(int))
    stats = _open_group(post_path, "sample_stats")
    divergent = None
    if stats is not None:
        with stats:
            if "diverging" in stats:
                divergent = int(np.asarray(stats["diverging"].values).sum())
    rhats = [params[n]["rhat"] for n in names if n not in nuisance]
    return {
        "lens_params": names,
        "nuisance_params": nuisance,
        "params": params,
        "chains": int(n_chain),
        "draws_per_chain": int(chi2.shape[1]),
        "chain_chi2": [float(c) for c in chain_chi2],
        "chi2_mean": float(chi2.mean()),
        "chi2_dominant": float(chi2[dominant].mean()),
        "chi2_source": chi2_from,
        "true_chi2": float(true_chi2),
        "mode_tol": float(mode_tol),
        "dominant_chains": dominant,
        "all_dominant": len(dominant) == n_chain,
        "max_rhat": float(np.nanmax(rhats)) if np.any(np.isfinite(rhats)) else float("nan"),
        "divergent": divergent,
        "extra_warmup": None if extra is None else int(extra),
        "lens_draws": np.round(flat[keep], 6).tolist(),
    }


# ------------------------------------------------------------------------------ running one system


def sample_command(obs, out, truth, args) -> list[str]:
    exe = Path(sys.executable).with_name("blindlens")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "blindlens"]
    cmd += ["sample", str(obs), "--out", str(out), "--truth", str(truth)]
    for flag in ("prior", "warmup", "draws", "chains"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag}", str(value)]
    if args.lens_light:
        cmd += ["--lens-light", "sersic"]
    return cmd + shlex.split(args.sample_args or "")


def _git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_system(i: int, args, jsonl: Path) -> dict:
    folder = Path(args.work) / args.name / f"system_{i:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    obs, truth_path = folder / "obs.fits", folder / "truth.npz"
    with _LOCK:  # simulation is quick; GalSim/lenstronomy need not be thread-safe
        system = simulate_system(i, args.population, args.seed, lens_light=args.lens_light,
                                 source_oversample=args.source_oversample)
        if args.mirror:
            system = mirror_system(system)
        if not (obs.exists() and truth_path.exists()):
            write_system(system, folder)
    out = folder / "post.nc"
    cmd = sample_command(obs, out, truth_path, args)
    if args.reanalyse:  # re-read an earlier run's outputs; the CLI is not run
        old = latest_rows(jsonl).get(i, {})
        rc, wall = (0 if out.exists() else 1), float(old.get("wall_s", float("nan")))
    else:
        print(f"[system {i}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        t0 = time.time()
        with open(folder / "sample.log", "a") as log:
            log.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, cwd=folder, env=_USER_ENV, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.time() - t0
    log_path = folder / "sample.log"
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    text = text[text.rfind("\n$ "):]  # the last run's output only
    warnings = [ln.strip() for ln in text.splitlines()
                if re.match(r"\s*(WARNING|blindlens:)", ln) or re.search(r"\bwrong mode|exclud|restart", ln, re.I)]
    record = {
        "system": i, "population": args.population, "seed": args.seed, "name": args.name, "mirror": args.mirror,
        "command": (["blindlens"] + cmd[1:]) if cmd[0].endswith("blindlens") else cmd, "returncode": rc,
        "wall_s": round(wall, 1), "lens_truth": system["lens"], "source_info": system["source_info"],
        "source_center": list(system["source_center"]), "peak_snr": system["peak_snr"],
        "noise_sigma": system["noise_sigma"], "true_chi2": system["true_chi2_per_n"], "git": _git_state(),
        "lens_light_truth": light_truth(system.get("lens_light")),
        "cli_warnings": warnings[-10:],
        # a loud message about the fit or the modes (not e.g. "too few draws"): what a user would act on
        "cli_flagged_fit": any(re.search(r"\bmodes?\b|chi\^2|exclud|restart|discard|disagree|grid's edge", w, re.I)
                               for w in warnings),
    }
    m = re.findall(r"max R-hat\s+([0-9.]+|nan|inf)", text)
    record["cli_max_rhat"] = float(m[-1]) if m else None
    if rc != 0 or not out.exists():
        record["status"] = "failed"
        record["error_tail"] = text.splitlines()[-15:]
    else:
        try:
            truth = {**system["lens"], **light_truth(system.get("lens_light"))}
            record.update(analyse(out, truth, system["true_chi2_per_n"], args.mode_tol))
            record["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - keep the study going; the line says what broke
            record["status"] = "failed"
            record["error_tail"] = [f"analysis: {type(err).__name__}: {err}"]
        if args.delete_posteriors and record["status"] == "ok":
            for p in folder.glob("post*"):
                if p.is_file():
                    p.unlink()
    with _LOCK:
        if args.reanalyse:  # replace this system's line(s)
            keep = [r for r in read_jsonl(jsonl) if r["system"] != i]
            tmp = jsonl.with_name(jsonl.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep + [record]))
            tmp.replace(jsonl)
        else:
            with open(jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
    status = record["status"]
    extra = ""
    if status == "ok":
        extra = (f": chains chi^2/N {', '.join(f'{c:.3f}' for c in record['chain_chi2'])} (truth "
                 f"{record['true_chi2']:.3f}), dominant {record['dominant_chains']}, max R-hat {record['max_rhat']:.3f}")
    print(f"[system {i}] {status} in {wall / 60:.1f} min{extra}", flush=True)
    return record


def parse_systems(spec: str) -> list[int]:
    if ":" in spec:
        a, b = spec.split(":", 1)
        return list(range(int(a or 0), int(b)))
    return [int(s) for s in spec.split(",") if s.strip()]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"warning: skipping a malformed line in {path}", file=sys.stderr)
    return rows


def latest_rows(path: Path) -> dict[int, dict]:
    """The last line per system (a rerun supersedes an earlier failed line)."""
    return {r["system"]: r for r in read_jsonl(path)}


def pooled_rows(paths: list[Path]) -> dict[int, dict]:
    """The latest line per system over several JSONL files (later files win), tagged ``_run``.

    Every row must come from one population: a ``broad`` system 3 and an ``xdf`` system 3 are
    different lenses, so mixing populations is refused.
    """
    merged: dict[int, dict] = {}
    for path in paths:
        for k, r in latest_rows(path).items():
            merged[k] = {**r, "_run": path.stem}
    populations = sorted({r.get("population", "?") for r in merged.values()})
    if len(populations) > 1:
        raise SystemExit(f"error: the pooled files mix populations {populations}; report each population on its own.")
    return merged


def run_study(args) -> int:
    jsonl = Path(args.jsonl) if args.jsonl else CALIBRATION / f"{args.name}.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = {k for k, r in latest_rows(jsonl).items() if r.get("status") == "ok" or not args.retry_failed}
    todo = [i for i in parse_systems(args.systems) if args.reanalyse or i not in done]
    print(f"{args.name}: {len(todo)} systems to run ({len(done)} already in {jsonl}); work folder "
          f"{Path(args.work) / args.name}", flush=True)
    if args.fresh and not args.reanalyse:
        for i in todo:
            shutil.rmtree(Path(args.work) / args.name / f"system_{i:03d}", ignore_errors=True)
    if args.jobs <= 1:
        for i in todo:
            run_system(i, args, jsonl)
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda i: run_system(i, args, jsonl), todo))
    return 0


# ------------------------------------------------------------------------------ report


def _fmt(x, spec=".3f"):
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def light_table(ok: list[dict], light_names: list[str], se68: float, se95: float) -> list[str]:
    """Markdown lines: the deflector light's recovery over systems (z, coverage, relative error)."""
    lines = ["## Deflector light recovery over systems", "",
             "Relative error = (posterior mean - truth) / truth, for the positive parameters; the centres and "
             "ellipticities in arcsec and units of ellipticity (absolute error).", "",
             "| parameter | mean z | sd of z | 68% coverage | 95% coverage | median abs error | max abs error |",
             "|---|---|---|---|---|---|---|"]
    for p in light_names:
        z = np.array([r["params"][p]["z"] for r in ok], float)
        z = z[np.isfinite(z)]
        truth = np.array([r["lens_light_truth"][p] for r in ok], float)
        mean = np.array([r["params"][p]["mean"] for r in ok], float)
        relative = p.endswith(("amp", "R_sersic", "n_sersic"))
        err = np.abs(mean - truth) / (np.abs(truth) if relative else 1.0)
        unit = "%" if relative else ""
        scale = 100.0 if relative else 1.0
        in68 = np.mean([r["params"][p]["in68"] for r in ok])
        in95 = np.mean([r["params"][p]["in95"] for r in ok])
        sd = float(z.std(ddof=1)) if z.size > 1 else float("nan")
        lines.append(f"| {p} | {_fmt(float(z.mean()) if z.size else float('nan'), '+.2f')} | {_fmt(sd, '.2f')} | "
                     f"{in68:.2f} +- {se68:.2f} | {in95:.2f} +- {se95:.2f} | "
                     f"{np.median(err) * scale:.3g}{unit} | {err.max() * scale:.3g}{unit} |")
    return lines + [""]


def report(args) -> int:
    from blindlens.validation import tarp_coverage

    jsonl = Path(args.jsonl) if args.jsonl else CALIBRATION / f"{args.name}.jsonl"
    sources = [Path(f) for f in (args.pool or [])] + [jsonl]
    missing = [str(f) for f in sources[:-1] if not f.exists()]
    if missing:
        raise SystemExit(f"error: --pool file(s) not found: {', '.join(missing)}; pass existing JSONL files.")
    latest = pooled_rows(sources)
    rows = [latest[k] for k in sorted(latest)]
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") != "ok"]
    pooled = len(sources) > 1
    out = Path(args.out) if args.out else CALIBRATION / f"{args.name}_tables.md"
    lines = [f"# Cold-start study `{args.name}`: {len(ok)} systems from "
             f"{', '.join(f'`{f.name}`' for f in sources)}", ""]
    if pooled:
        lines += ["Pooled from several runs of the same population (the `run` column names each system's file; "
                  "a system in several files is taken from the last one listed).", ""]
    if rows:
        r0 = rows[0]
        lines += [
            f"Population `{r0['population']}` (simulated by lenstronomy, `scripts/lenstronomy_systems.py`, seed "
            f"{r0['seed']}); command per system: `{' '.join(r0['command'])}`",
            f"(paths vary per system); code {', '.join(sorted({r.get('git') or '?' for r in rows}))}. Dominant "
            f"mode: chain chi^2/N within {r0.get('mode_tol', float('nan'))} of the best chain's. "
            "z = (posterior mean - truth) / posterior sd "
            "over all chains pooled (what a user reports). Written by `scripts/cold_start_study.py --report`.",
            "",
        ]
    if failed:
        lines += [f"**{len(failed)} system(s) failed**: " + ", ".join(str(r["system"]) for r in failed), ""]
    if not ok:
        out.write_text("\n".join(lines + ["No finished systems yet.", ""]))
        print(f"wrote {out} (no finished systems)")
        return 0
    with_z = [n for n in ok[0]["lens_params"] if all(n in r["params"] and "z" in r["params"][n] for r in ok)]
    names = [n for n in with_z if not n.startswith(LIGHT_PREFIX)]  # the mass: the calibration goals
    light_names = [n for n in with_z if n.startswith(LIGHT_PREFIX)]

    lines += ["## Per system", ""]
    head = ("| system | theta_E true | peak SNR | chains in dominant mode | chain chi^2/N | truth chi^2/N | "
            "dominant - truth | max R-hat (CLI) | max abs z (mass) | CLI flagged the fit | wall min |"
            + (" run |" if pooled else ""))
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in ok:
        zmax = max(abs(r["params"][n]["z"]) for n in names) if names else float("nan")
        wrong = not r["all_dominant"]
        lines.append(
            f"| {r['system']} | {r['lens_truth']['theta_E']:.3f} | {r['peak_snr']:.0f} | "
            f"{len(r['dominant_chains'])}/{r['chains']}{' **wrong mode**' if wrong else ''} | "
            f"{', '.join(f'{c:.3f}' for c in r['chain_chi2'])} | {r['true_chi2']:.3f} | "
            f"{r['chi2_dominant'] - r['true_chi2']:+.3f} | {_fmt(lens_max_rhat(r))} ({_fmt(r.get('cli_max_rhat'))}) | "
            f"{_fmt(zmax, '.1f')} | {'yes' if r.get('cli_flagged_fit') else 'no'} | {r['wall_s'] / 60:.1f} |"
            + (f" {r['_run']} |" if pooled else "")
        )
    lines.append("")

    n = len(ok)
    z = np.array([[r["params"][p]["z"] for p in names] for r in ok], float)
    in68 = np.array([[r["params"][p]["in68"] for p in names] for r in ok], float)
    in95 = np.array([[r["params"][p]["in95"] for p in names] for r in ok], float)
    se68, se95 = np.sqrt(0.68 * 0.32 / n), np.sqrt(0.95 * 0.05 / n)
    lines += ["## Lens calibration over systems", "",
              f"{n} systems; binomial sd of a coverage fraction at the nominal level: 68%: {se68:.3f}, 95%: {se95:.3f}. "
              "Goals (issue 14): |mean z| < 0.2, sd of z in 1 +- 0.15, coverage within binomial error of nominal.", "",
              "| parameter | mean z | sd of z | 68% coverage | 95% coverage |", "|---|---|---|---|---|"]
    for k, p in enumerate(names):
        zk = z[:, k][np.isfinite(z[:, k])]
        sd = float(zk.std(ddof=1)) if zk.size > 1 else float("nan")
        lines.append(f"| {p} | {_fmt(float(zk.mean()) if zk.size else float('nan'), '+.2f')} | {_fmt(sd, '.2f')} | "
                     f"{in68[:, k].mean():.2f} +- {se68:.2f} | {in95[:, k].mean():.2f} +- {se95:.2f} |")
    zf = z[np.isfinite(z)]
    lines.append(f"| all | {_fmt(float(zf.mean()) if zf.size else float('nan'), '+.2f')} | "
                 f"{_fmt(float(zf.std(ddof=1)) if zf.size > 1 else float('nan'), '.2f')} | {in68.mean():.2f} | "
                 f"{in95.mean():.2f} |")
    lines.append("")
    if light_names:
        lines += light_table(ok, light_names, se68, se95)

    # TARP on the lens parameters present in every row, references uniform in the simulation box
    tp = [p for p in names if p in LENS_RANGES]
    if tp and all(len(r["lens_draws"]) for r in ok):
        m = min(len(r["lens_draws"]) for r in ok)
        cols = [ok[0]["lens_params"].index(p) for p in tp]
        draws = np.stack([np.asarray(r["lens_draws"], float)[np.linspace(0, len(r["lens_draws"]) - 1, m).astype(int)][:, cols]
                          for r in ok])
        truth = np.array([[r["lens_truth"][p] for p in tp] for r in ok], float)
        lo = np.array([LENS_RANGES[p][0] for p in tp])
        hi = np.array([LENS_RANGES[p][1] for p in tp])
        refs = lo + (hi - lo) * np.random.default_rng(0).uniform(size=truth.shape)
        _, _, atc = tarp_coverage(draws / (hi - lo), truth / (hi - lo), refs / (hi - lo))
        tarp_line = (f"* TARP ATC on the {len(tp)} lens parameters: {atc:+.3f} (0 calibrated; negative "
                     f"overconfident; references uniform in the simulation box, {m} draws per system)")
    else:
        tarp_line = "* TARP: not computed (no stored draws)"

    all_dom = np.array([r["all_dominant"] for r in ok], float)
    unflagged = [r["system"] for r in ok if not r["all_dominant"] and not r.get("cli_flagged_fit")]
    d_dom = np.array([r["chi2_dominant"] - r["true_chi2"] for r in ok])
    d_all = np.array([r["chi2_mean"] - r["true_chi2"] for r in ok])
    p = all_dom.mean()
    rh = np.array([lens_max_rhat(r) for r in ok], float)
    rh_median = float(np.median(rh[np.isfinite(rh)])) if np.isfinite(rh).any() else float("nan")
    lines += [
        "## Modes and fit", "",
        f"* Systems with every chain in the dominant mode: {int(all_dom.sum())}/{n} = {p:.2f} +- "
        f"{np.sqrt(max(p * (1 - p), 1e-12) / n):.2f}",
        f"* Systems with a chain in a wrong mode and no warning from the CLI: {len(unflagged)}"
        + (f" (systems {', '.join(map(str, unflagged))})" if unflagged else "") + " (goal: 0)",
        f"* chi^2/N minus the truth's, dominant chains: mean {d_dom.mean():+.3f}, median {np.median(d_dom):+.3f}, "
        f"max {d_dom.max():+.3f}; within 0.05: {int(np.sum(d_dom <= 0.05))}/{n} (goal: all)",
        f"* chi^2/N minus the truth's, all chains pooled: mean {d_all.mean():+.3f}, max {d_all.max():+.3f}",
        tarp_line,
        *degeneracy_lines(z, names),
        f"* Max R-hat (lens parameters; a sampled grid placement alpha is a nuisance, not judged): median {_fmt(rh_median)}; wall time per system: median "
        f"{np.median([r['wall_s'] for r in ok]) / 60:.1f} min",
        "",
    ]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    print("\n".join(lines))
    return 0


DEGENERATE_PAIRS = (("e1", "gamma1"), ("e2", "gamma2"))
"""Lens parameters whose errors the ellipticity-shear degeneracy ties together (reported as z correlations)."""


def degeneracy_lines(z: np.ndarray, names: list[str]) -> list[str]:
    """One report line: the correlation over systems of the z of each degenerate pair present, and the
    sd of z along each pair's sum (errors along the degeneracy) and difference; [] when fewer than 3 rows."""
    parts = []
    for a, b in DEGENERATE_PAIRS:
        if a in names and b in names and z.shape[0] >= 3:
            za, zb = z[:, names.index(a)], z[:, names.index(b)]
            keep = np.isfinite(za) & np.isfinite(zb)
            if keep.sum() >= 3:
                r = float(np.corrcoef(za[keep], zb[keep])[0, 1])
                s_sum = float(np.std((za[keep] + zb[keep]) / np.sqrt(2), ddof=1))
                s_diff = float(np.std((za[keep] - zb[keep]) / np.sqrt(2), ddof=1))
                parts.append(f"{a}-{b} {r:+.2f} (sd of z along the sum / difference {s_sum:.2f} / {s_diff:.2f})")
    return [f"* Correlation of the z over systems: {'; '.join(parts)}"] if parts else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--systems", default="0:30", help="range a:b or list i,j,k of system indices")
    p.add_argument("--population", choices=POPULATIONS, default="broad")
    p.add_argument("--name", default=None, help="study name (default cold_start_<population>)")
    p.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "blindlens_cold_start"),
                   help="work folder (one sub-folder per name and system; the CLI's checkpoints live there)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (lens, offset, SNR, noise)")
    p.add_argument("--prior", default=None, help="passed to blindlens sample --prior (default: the CLI's)")
    p.add_argument("--warmup", type=int, default=None, help="passed to --warmup (default: the CLI's)")
    p.add_argument("--draws", type=int, default=None, help="passed to --draws (default: the CLI's)")
    p.add_argument("--chains", type=int, default=None, help="passed to --chains (default: the CLI's)")
    p.add_argument("--lens-light", action="store_true",
                   help="simulate a Sérsic deflector 5-20x brighter than the arcs and pass --lens-light sersic")
    p.add_argument("--source-oversample", type=int, default=1,
                   help="draw the procedural galaxies k times finer than 0.05\" (same field), so that no 0.05\" "
                        "source grid is theirs (default 1: the galaxies are bilinear images on a 0.05\" grid)")
    p.add_argument("--mirror", action="store_true",
                   help="reflect each system across x = y (lenstronomy_systems.mirror_system): a symmetry check; "
                        "an inference with no preferred axis flips the sign of e1's and gamma1's z")
    p.add_argument("--sample-args", default="", help="further blindlens sample options, verbatim (quoted string)")
    p.add_argument("--jobs", type=int, default=1, help="systems run at the same time")
    p.add_argument("--mode-tol", type=float, default=0.05,
                   help="a chain is in the dominant mode if its mean chi^2/N is within this of the best chain's")
    p.add_argument("--jsonl", default=None, help="results file (default docs/calibration/<name>.jsonl)")
    p.add_argument("--retry-failed", action="store_true", help="rerun systems whose line says failed")
    p.add_argument("--fresh", action="store_true", help="delete the work folders of the systems to run first")
    p.add_argument("--delete-posteriors", action="store_true", help="delete post.nc and figures once recorded")
    p.add_argument("--reanalyse", action="store_true",
                   help="rebuild the lines of --systems from the posteriors and logs already in --work (no sampling)")
    p.add_argument("--report", action="store_true", help="write docs/calibration/<name>_tables.md from the JSONL")
    p.add_argument("--out", default=None, help="report path (default docs/calibration/<name>_tables.md)")
    p.add_argument("--pool", nargs="+", default=None, metavar="JSONL",
                   help="with --report: also pool these results files (same population; --jsonl's rows win)")
    args = p.parse_args(argv)
    args.name = args.name or f"cold_start_{args.population}"
    return report(args) if args.report else run_study(args)


if __name__ == "__main__":
    raise SystemExit(main())
