"""How many chains, how many draws: lens calibration of sub-runs of finished many-chain runs.

A run of ``C`` chains (``blindlens sample --chains C``) holds every smaller run inside it: any
``k`` of its chains, each cut to its first ``m`` draws, is what a ``--chains k --draws m`` run
from the same pool of starts would have given (the same starts, keys and warm-up; only the
post-warm-up restart of chains in a worse mode, which copies the best chain of all ``C``, and
the pool's ranking see the other chains). This script reads such runs (the ``post.nc`` and
``truth.npz`` of :mod:`cold_start_study`'s work folders) and reports, for every ``k`` and ``m``,
the lens z-scores ``(posterior mean - truth) / posterior sd`` of the pooled draws averaged over
all ``C choose k`` chain subsets: the calibration a user would see from ``k`` chains, without
running them. No sampling; seconds per run.

Usage::

    python scripts/chain_count_study.py /tmp/cst/NAME/system_011 /tmp/cst/NAME/system_013 \
        --chains 2 4 8 --draws 100 300 --out docs/calibration/NAME_subsets.md

z over all subsets of one system are not independent (they share chains), so the table gives
their root mean square per (k, m) pooled over systems and parameters, and the coverage of the
68%/95% intervals (each subset's own quantiles) averaged over subsets.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tomllib
from pathlib import Path

import numpy as np

LENS = ("theta_E", "e1", "e2", "center_x", "center_y", "gamma1", "gamma2")


def lens_truth(truth_path: Path) -> dict[str, float]:
    """The true lens parameters of a cold-start system's ``truth.npz`` (its lenstronomy-style TOML)."""
    with np.load(truth_path) as t:
        config = tomllib.loads(str(t["lens_toml"]))
    out: dict[str, float] = {}
    for profile in config.get("profile", []):
        for name, value in profile.items():
            if name in LENS:
                out.setdefault(name, float(value))
    return out


def lens_draws(post_path: Path) -> dict[str, np.ndarray]:
    """``{name: (chain, draw)}`` of the lens parameters in a run's posterior group."""
    import xarray as xr

    with xr.open_dataset(post_path, group="posterior") as post:
        return {n: np.asarray(post[n].values, float) for n in LENS if n in post}


def subset_scores(draws: dict[str, np.ndarray], truth: dict[str, float], k: int, m: int) -> dict:
    """z, 68% and 95% coverage of every ``k``-chain subset cut to ``m`` draws, per parameter."""
    n_chain = next(iter(draws.values())).shape[0]
    out = {n: {"z": [], "in68": [], "in95": []} for n in draws if n in truth}
    for subset in itertools.combinations(range(n_chain), k):
        for n, rec in out.items():
            v = draws[n][list(subset), :m].reshape(-1)
            t = truth[n]
            sd = v.std()
            rec["z"].append((v.mean() - t) / sd if sd > 0 else np.nan)
            q = np.quantile(v, [0.025, 0.16, 0.84, 0.975])
            rec["in68"].append(bool(q[1] <= t <= q[2]))
            rec["in95"].append(bool(q[0] <= t <= q[3]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="system folders holding post.nc and truth.npz")
    parser.add_argument("--chains", nargs="+", type=int, default=[2, 4, 8], help="sub-run chain counts k")
    parser.add_argument("--draws", nargs="+", type=int, default=[100, 300], help="sub-run draws per chain m")
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    args = parser.parse_args(argv)

    runs = []
    for folder in args.runs:
        post, truth = folder / "post.nc", folder / "truth.npz"
        for path in (post, truth):
            if not path.is_file():
                parser.error(f"{path} not found: pass folders of a finished cold_start_study run.")
        runs.append((folder.name, lens_draws(post), lens_truth(truth)))

    lines = ["| chains k | draws m | runs | rms z | mean z | max abs z (mean over subsets) | 68% coverage | 95% coverage |",
             "|---|---|---|---|---|---|---|---|"]
    per_system = ["| system | chains k | draws m | z per parameter (subset mean) | rms z |", "|---|---|---|---|---|"]
    for k in args.chains:
        for m in args.draws:
            zs, c68, c95, maxes, used = [], [], [], [], 0
            for name, draws, truth in runs:
                n_chain, n_draw = next(iter(draws.values())).shape
                if k > n_chain or m > n_draw:
                    continue
                used += 1
                scores = subset_scores(draws, truth, k, m)
                z = np.array([scores[n]["z"] for n in scores])  # (param, subset)
                zs.append(z.reshape(-1))
                maxes.append(np.nanmean(np.nanmax(np.abs(z), axis=0)))
                c68.append(np.mean([scores[n]["in68"] for n in scores]))
                c95.append(np.mean([scores[n]["in95"] for n in scores]))
                per_system.append(
                    f"| {name} | {k} | {m} | "
                    + ", ".join(f"{n} {np.nanmean(scores[n]['z']):+.2f}" for n in scores)
                    + f" | {np.sqrt(np.nanmean(z**2)):.2f} |"
                )
            if not used:
                continue
            z = np.concatenate(zs)
            lines.append(
                f"| {k} | {m} | {used} | {np.sqrt(np.nanmean(z**2)):.2f} | {np.nanmean(z):+.2f} | "
                f"{np.mean(maxes):.2f} | {np.mean(c68):.2f} | {np.mean(c95):.2f} |"
            )
    text = "\n".join(lines) + "\n\n" + "\n".join(per_system) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(
            f"# Sub-runs of many-chain runs (`scripts/chain_count_study.py`)\n\nRuns: "
            + ", ".join(str(f) for f in args.runs) + "\n\n" + text
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
