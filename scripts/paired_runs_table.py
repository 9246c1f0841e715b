"""Side-by-side table of cold-start study rows: the same systems run in several ways.

Each ``--run LABEL=ROWS.jsonl`` is a file of ``scripts/cold_start_study.py`` rows; the table has one
line per system and run (lens z-scores, rms z, the chains' residual chi^2/N beside the true
source's, sweeps the warm-up was extended by, max R-hat, wall time), then, for the runs that hold
every system of the first run (``--pool``), the pooled mean and sd of z and the 68/95% coverage.

    python scripts/paired_runs_table.py \\
        --run "no extension=docs/calibration/cold_start_broad_heldout_noextra.jsonl" \\
        --run "settling=docs/calibration/cold_start_broad_heldout_settle.jsonl"
"""

from __future__ import annotations

import argparse
import ast
import json
import math
from pathlib import Path

LENS = ("theta_E", "e1", "e2", "center_x", "center_y", "gamma1", "gamma2")


def load_rows(path: Path) -> dict:
    """``{system: row}`` of a rows file (a later row of a system replaces an earlier one)."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["system"]] = row
    return rows


def _params(row: dict) -> dict:
    params = row["params"]
    return ast.literal_eval(params) if isinstance(params, str) else params


def lens_values(row: dict, key: str) -> list:
    """``key`` (``z``, ``in68``, ``in95``) of each lens parameter of a row."""
    params = _params(row)
    return [params[name][key] for name in LENS]


def table(runs: dict[str, dict]) -> list[str]:
    lines = ["| system | run | extra sweeps | chains' chi^2/N (true source) | " + " | ".join(LENS)
             + " | rms z | max R-hat | wall (min) |",
             "|---|---|---|---|" + "---|" * len(LENS) + "---|---|---|"]
    for system in sorted({s for rows in runs.values() for s in rows}):
        for label, rows in runs.items():
            if system not in rows:
                continue
            row = rows[system]
            z = lens_values(row, "z")
            rms = math.sqrt(sum(v * v for v in z) / len(z))
            extra = row.get("extra_warmup")
            chi2 = ", ".join(f"{c:.3f}" for c in row["chain_chi2"])
            lines.append(f"| {system} | {label} | {'-' if extra is None else extra} | {chi2} ({row['true_chi2']:.3f}) | "
                         + " | ".join(f"{v:+.2f}" for v in z)
                         + f" | **{rms:.2f}** | {row['max_rhat']:.2f} | {row['wall_s'] / 60:.1f} |")
    return lines


def pooled(runs: dict[str, dict], labels: list[str]) -> list[str]:
    common = sorted(set.intersection(*(set(runs[label]) for label in labels)))
    lines = [f"Pooled over systems {', '.join(str(s) for s in common)} ({len(common) * len(LENS)} lens z-scores):", ""]
    for label in labels:
        z = [v for s in common for v in lens_values(runs[label][s], "z")]
        n = len(z)
        mean = sum(z) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in z) / (n - 1))
        c68 = sum(v for s in common for v in lens_values(runs[label][s], "in68")) / n
        c95 = sum(v for s in common for v in lens_values(runs[label][s], "in95")) / n
        lines.append(f"* {label}: mean z {mean:+.2f}, sd of z {sd:.2f}, rms z {math.sqrt(sum(v * v for v in z) / n):.2f}, "
                     f"68/95% coverage {c68:.2f} / {c95:.2f}")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=ROWS.jsonl")
    p.add_argument("--pool", action="append", default=None, metavar="LABEL",
                   help="runs pooled over the systems they share (default: the first two)")
    args = p.parse_args(argv)
    runs = {}
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep:
            p.error(f"--run {spec!r}: expected LABEL=ROWS.jsonl")
        runs[label] = load_rows(Path(path))
    labels = args.pool or list(runs)[:2]
    unknown = [label for label in labels if label not in runs]
    if unknown:
        p.error(f"--pool {unknown}: not a --run label ({', '.join(runs)})")
    print("\n".join(table(runs) + [""] + pooled(runs, labels)))


if __name__ == "__main__":
    main()
