"""How much of a run's lens posterior follows the source grid's placement (`--source-shift sampled`).

Reads cold-start study records (`scripts/cold_start_study.py` JSONL: per system the pooled lens
draws `lens_draws`, 256 thinned draws over all chains, with the placement `alpha_x, alpha_y`
among their columns, and per parameter the chains' means) and prints one markdown row per run:

* the placement's split R-hat (how far apart the chains sit in placement);
* for each lens parameter, R^2 of its least-squares regression on `(alpha_x, alpha_y)` over the
  pooled draws: the share of its posterior variance that moves with the placement. Near 1 means
  the lens sd the run reports is mostly the chains' different placements, not the data;
* the lens parameters' z = (pooled mean - truth) / pooled sd, for theta_E and the worst one;
* the spread of the chains' means in units of the pooled sd (the largest over the parameters).

No sampling: a few seconds. Usage::

    python scripts/placement_coupling.py docs/calibration/cold_start_broad_dec05_shift.jsonl \
        docs/calibration/cold_start_broad_dec05_shift_ss3.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PLACEMENT = ("alpha_x", "alpha_y")


def placement_r2(draws: np.ndarray, names: list[str], lens: list[str]) -> dict[str, float]:
    """R^2 of each lens parameter regressed (least squares, with intercept) on the placement."""
    design = np.column_stack([np.ones(len(draws))] + [draws[:, names.index(a)] for a in PLACEMENT])
    out = {}
    for name in lens:
        y = draws[:, names.index(name)]
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = y - design @ coef
        out[name] = float(1.0 - resid.var() / y.var()) if y.var() > 0 else float("nan")
    return out


def row(record: dict) -> str | None:
    names = record.get("lens_params", [])
    if not all(a in names for a in PLACEMENT) or "lens_draws" not in record:
        return None
    lens = [n for n in names if n not in PLACEMENT and n in record["lens_truth"]]
    draws = np.asarray(record["lens_draws"], float)
    r2 = placement_r2(draws, names, lens)
    params = record["params"]
    z = {n: params[n]["z"] for n in lens}
    worst = max(lens, key=lambda n: abs(z[n]))
    spread = {n: float(np.ptp(params[n]["chain_means"]) / params[n]["sd"]) for n in lens}
    widest = max(lens, key=lambda n: spread[n])
    rhat = max(params[a]["rhat"] for a in PLACEMENT)
    top = max(lens, key=lambda n: r2[n])
    return (f"| {record['name']} | {record['system']} | {rhat:.2f} | {r2[top]:.2f} ({top}) | "
            f"{np.median(list(r2.values())):.2f} | {r2['theta_E']:.2f} | {z['theta_E']:+.1f} | "
            f"{z[worst]:+.1f} ({worst}) | {spread[widest]:.1f} ({widest}) |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", nargs="+", type=Path, help="cold-start study records")
    args = parser.parse_args(argv)
    print("| run | system | placement R-hat | max R^2 on the placement | median R^2 | theta_E R^2 | theta_E z | "
          "worst z | chains' means apart (pooled sd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.jsonl:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("status") != "ok":
                continue
            text = row(record)
            if text is not None:
                print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
