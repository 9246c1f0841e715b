"""The lenses of a catalogue: ``blindlens catalogue``'s INPUT read into :class:`LensEntry` items.

:func:`read_catalogue` is the input side of :mod:`blindlens.catalogue` (the Dask engine that runs the
lenses, and re-exports :func:`read_catalogue` and :class:`LensEntry`); it needs no Dask or pandas.

INPUT
-----
A directory
    Its observation files (:data:`OBSERVATION_SUFFIXES`, not ``*_truth.npz``), sorted.
A glob pattern
    The observation files it matches, sorted.
A CSV file
    A column ``observation``, an optional ``name`` and per-lens sampling options named as
    :class:`~blindlens.pipeline.SampleOptions` fields (``-`` or ``_``), read by the field's type;
    relative paths are relative to the CSV.
An observation file
    That lens; or a list of any of these.

Names are the file stems (or the ``name`` column) and must be unique. Input-file options are made
absolute (workers may run in another directory).
"""

from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path

from .pipeline import DEFAULTS, SampleOptions, is_prior_file

__all__ = ["OBSERVATION_SUFFIXES", "LensEntry", "read_catalogue"]

OBSERVATION_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".npz")
"""Files of a directory or glob INPUT that are observations (``*_truth.npz`` files are not)."""


@dataclasses.dataclass(frozen=True)
class LensEntry:
    """One lens of a catalogue: its name (output file stem), observation file and options."""

    name: str
    observation: str
    options: SampleOptions


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(OBSERVATION_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_observation(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(OBSERVATION_SUFFIXES) and not name.endswith("_truth.npz")


def _field_type(name: str):
    """``int``, ``float``, ``bool`` or ``str``: how a CSV cell of option ``name`` is read."""
    fld = SampleOptions.__dataclass_fields__[name]
    if fld.default is not None and not isinstance(fld.default, str):
        return type(fld.default)
    text = str(fld.type)
    return float if "float" in text else int if "int" in text else str


def _cell(name: str, text: str):
    kind = _field_type(name)
    if kind is bool:
        if text.strip().lower() in ("1", "true", "yes", "y"):
            return True
        if text.strip().lower() in ("0", "false", "no", "n"):
            return False
        raise ValueError(f"column {name}: expected true/false, got {text!r}.")
    if kind is tuple or name == "source_center":
        if name == "source_center" and text.strip().lower() == "auto":
            return "auto"
        try:
            return tuple(float(v) for v in text.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"column {name}: expected numbers, got {text!r}.") from None
    if name in ("refresh_sigma", "split_gibbs_floor"):  # 'auto' (refresh: 'none') or a noise level
        word = text.strip().lower()
        if word == "auto" or (word == "none" and name == "refresh_sigma"):
            return None if word == "none" else "auto"
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"column {name}: expected 'auto' or a number, got {text!r}.") from None
    if name in ("warm_start_tries", "source_size"):  # 'auto' or a whole number (trajectories, pixels)
        if text.strip().lower() == "auto":
            return "auto"
        kind = int
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"column {name}: cannot read {text!r} as {kind.__name__}.") from None


def _absolute(options: SampleOptions, base: Path) -> SampleOptions:
    """Input-file options resolved against ``base`` (workers may run elsewhere)."""
    changes = {}
    for fld in dataclasses.fields(SampleOptions):
        value = getattr(options, fld.name)
        if fld.metadata.get("file") and isinstance(value, (str, Path)):
            changes[fld.name] = str((base / value).resolve())
    spec = options.lens_model
    if ":" in spec:
        file, func = spec.rsplit(":", 1)
        changes["lens_model"] = f"{(base / file).resolve()}:{func}"
    if is_prior_file(options.prior):
        changes["prior"] = str((base / options.prior).resolve())
    if options.figures is not None:
        changes["figures"] = str((base / options.figures).resolve())
    return options.replace(**changes)


def _read_csv(path: Path, options: SampleOptions) -> list[LensEntry]:
    import csv

    fields = {f.name for f in dataclasses.fields(SampleOptions)}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        keys = {c: c.replace("-", "_") for c in columns}
        if "observation" not in columns:
            raise ValueError(f"catalogue {path}: needs a column 'observation' (the observation files); "
                             f"it has {columns}.")
        unknown = [c for c in columns if c not in ("observation", "name") and keys[c] not in fields]
        if unknown:
            raise ValueError(f"catalogue {path}: unknown column(s) {unknown}; per-lens columns are sampling "
                             f"options: {sorted(fields - {'figures', 'no_resume'})}.")
        entries = []
        for i, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not row.get("observation"):
                raise ValueError(f"catalogue {path}, line {i}: no observation file.")
            changes = {}
            for column in columns:
                if column in ("observation", "name") or not row.get(column):
                    continue
                try:
                    changes[keys[column]] = _cell(keys[column], row[column])
                except ValueError as err:
                    raise ValueError(f"catalogue {path}, line {i}: {err}") from None
            obs = (path.parent / row["observation"]).resolve()
            entries.append(LensEntry(row.get("name") or _stem(obs), str(obs),
                                     _absolute(options.replace(**changes), path.parent)))
    return entries


def read_catalogue(inputs, options: SampleOptions | None = None) -> list[LensEntry]:
    """The lenses of INPUT, in order.

    ``inputs``: a directory (its observation files, sorted), a glob pattern, a CSV file (a column
    ``observation``, optional ``name`` and per-lens sampling options named as
    :class:`~blindlens.pipeline.SampleOptions` fields, e.g. ``lens_model``, ``truth``, ``seed``;
    relative paths are relative to the CSV), a single observation file, or a list of any of
    these. Names are the file stems (or the ``name`` column) and must be unique.
    """
    options = DEFAULTS if options is None else options
    base = _absolute(options, Path.cwd())
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    entries: list[LensEntry] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if _is_observation(p))
        elif path.suffix.lower() == ".csv" and path.is_file():
            entries += _read_csv(path, base)
            continue
        elif path.exists():
            files = [path]
        else:
            files = sorted(p for p in map(Path, glob.glob(str(item))) if _is_observation(p))
            if not files:
                raise FileNotFoundError(f"catalogue input {item}: no such file or directory, and no observation "
                                        f"files ({', '.join(OBSERVATION_SUFFIXES)}) match it.")
        entries += [LensEntry(_stem(p), str(p.resolve()), base) for p in files]
    if not entries:
        raise ValueError(f"catalogue input {list(map(str, inputs))} holds no observation files "
                         f"({', '.join(OBSERVATION_SUFFIXES)}).")
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"two lenses are named {entry.name!r} ({seen[entry.name]} and {entry.observation}); "
                             "give them distinct names (a CSV with a 'name' column).")
        seen[entry.name] = entry.observation
    return entries
