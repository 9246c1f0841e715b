"""Lens configurations as TOML: one ``[[profile]]`` table per mass component.

Example (``src/blindlens/data/example_lens.toml``)::

    [[profile]]
    type = "SIE"
    theta_E = 1.2      # arcsec
    e1 = 0.088235
    e2 = 0.152828
    center_x = 0.05    # arcsec
    center_y = -0.03

    [[profile]]
    type = "SHEAR"
    gamma1 = 0.03
    gamma2 = -0.02

Types and their parameters (lenstronomy names and conventions, see ``docs/conventions.md``):

========== =================================================== ==================
type       required                                            optional
========== =================================================== ==================
SIS        theta_E, center_x, center_y
SIE        theta_E, e1, e2, center_x, center_y
EPL        theta_E, gamma, e1, e2, center_x, center_y           n_terms
SHEAR      gamma1, gamma2                                      ra_0, dec_0
MULTIPOLE  m, a_m, phi_m, center_x, center_y
========== =================================================== ==================

Several profiles are summed into one lens (``SIE(...) + ExternalShear(...)``).

The deflector's light, optional, is one ``[[light]]`` table per component::

    [[light]]
    type = "SERSIC_ELLIPSE"
    amp = 20.0         # surface brightness at R_sersic, image units per arcsec^2
    R_sersic = 0.8     # arcsec
    n_sersic = 4.0
    e1 = 0.05
    e2 = 0.0
    center_x = 0.05
    center_y = -0.03

and makes the lens a :class:`~blindlens.light_profiles.LensWithLight`.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import numpy as np

from ..physics.lens_models import (
    EPL,
    SIE,
    SIS,
    AbstractLens,
    CompositeLens,
    ExternalShear,
    Multipole,
)
from ..physics.light_profiles import (
    SERSIC_NAMES,
    LensLight,
    LensWithLight,
    SersicEllipse,
)

__all__ = [
    "PROFILE_TYPES",
    "lens_from_config",
    "lens_to_config",
    "load_lens_config",
    "save_lens_config",
    "dumps_lens_config",
]

# type -> (class, required parameters, optional parameters)
PROFILE_TYPES: dict[str, tuple[type, tuple[str, ...], tuple[str, ...]]] = {
    "SIS": (SIS, ("theta_E", "center_x", "center_y"), ()),
    "SIE": (SIE, ("theta_E", "e1", "e2", "center_x", "center_y"), ()),
    "EPL": (EPL, ("theta_E", "gamma", "e1", "e2", "center_x", "center_y"), ("n_terms",)),
    "SHEAR": (ExternalShear, ("gamma1", "gamma2"), ("ra_0", "dec_0")),
    "MULTIPOLE": (Multipole, ("m", "a_m", "phi_m", "center_x", "center_y"), ()),
}
LIGHT_TYPES: dict[str, tuple[type, tuple[str, ...], tuple[str, ...]]] = {
    "SERSIC_ELLIPSE": (SersicEllipse, SERSIC_NAMES, ()),
}
_INTEGER_PARAMS = {"m", "n_terms"}


def lens_from_config(config: dict) -> AbstractLens:
    """Build a lens Module from a parsed TOML mapping ``{"profile": [{...}, ...]}``.

    Raises
    ------
    ValueError
        For a missing or empty ``profile`` list, an unknown ``type``, a missing or unknown
        parameter, or a non-numeric / non-finite value; the message names the profile index.
    """
    if not isinstance(config, dict):
        raise ValueError(f"lens config must be a mapping with a [[profile]] list, got {type(config).__name__}.")
    unknown_top = set(config) - {"profile", "light", "description"}
    if unknown_top:
        raise ValueError(
            f"lens config has unknown top-level key(s) {sorted(unknown_top)}; only [[profile]] and [[light]] "
            "tables (and an optional description) are allowed."
        )
    profiles = config.get("profile")
    if not profiles or not isinstance(profiles, list):
        raise ValueError("lens config needs at least one [[profile]] table (e.g. type = \"SIE\").")
    lenses = [_profile_to_lens(i, p) for i, p in enumerate(profiles)]
    lens = lenses[0] if len(lenses) == 1 else CompositeLens(lenses)
    lights = config.get("light")
    if lights is None:
        return lens
    if not isinstance(lights, list) or not lights:
        raise ValueError("lens config [[light]] must be a list of tables (type = \"SERSIC_ELLIPSE\").")
    return LensWithLight(lens, LensLight([_profile_to_lens(i, p, "light", LIGHT_TYPES) for i, p in enumerate(lights)]))


def _profile_to_lens(index: int, profile, table: str = "profile", types=PROFILE_TYPES):
    where = f"lens config [[{table}]] #{index + 1}"
    if not isinstance(profile, dict):
        raise ValueError(f"{where} must be a table of parameters.")
    if "type" not in profile:
        raise ValueError(f"{where} has no 'type'; use one of {sorted(types)}.")
    ptype = str(profile["type"]).upper()
    if ptype not in types:
        raise ValueError(f"{where}: unknown type {profile['type']!r}; use one of {sorted(types)}.")
    cls, required, optional = types[ptype]
    params = {k: v for k, v in profile.items() if k != "type"}
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"{where} ({ptype}) is missing parameter(s) {missing}; required: {list(required)}.")
    unknown = [k for k in params if k not in required + optional]
    if unknown:
        raise ValueError(
            f"{where} ({ptype}) has unknown parameter(s) {unknown}; allowed: {list(required + optional)}."
        )
    kwargs = {}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} ({ptype}): parameter {name} must be a number, got {value!r}.")
        if not math.isfinite(value):
            raise ValueError(f"{where} ({ptype}): parameter {name} must be finite, got {value!r}.")
        if name in _INTEGER_PARAMS:
            if int(value) != value:
                raise ValueError(f"{where} ({ptype}): parameter {name} must be an integer, got {value!r}.")
            kwargs[name] = int(value)
        else:
            kwargs[name] = float(value)
    return cls(**kwargs)


def lens_to_config(lens: AbstractLens) -> dict:
    """The TOML mapping ``{"profile": [...], "light": [...]}`` of a lens Module (inverse of
    :func:`lens_from_config`; ``light`` only for a :class:`~blindlens.light_profiles.LensWithLight`)."""
    config = {"profile": _entries(lens.mass if isinstance(lens, LensWithLight) else lens)}
    if isinstance(lens, LensWithLight):
        config["light"] = _entries(lens.light)
    return config


def _entries(lens) -> list[dict]:
    components = lens.components if isinstance(lens, (CompositeLens, LensLight)) else (lens,)
    types = {**PROFILE_TYPES, **LIGHT_TYPES}
    type_of_class = {cls: name for name, (cls, _, _) in types.items()}
    profiles = []
    for comp in components:
        ptype = type_of_class.get(type(comp))
        if ptype is None:
            raise ValueError(f"cannot write a {type(comp).__name__} to a lens config; supported: {sorted(types)}.")
        _, required, optional = types[ptype]
        entry = {"type": ptype}
        for name in required + optional:
            value = getattr(comp, name)
            arr = np.asarray(value)
            if arr.ndim != 0:
                raise ValueError(f"cannot write a batched {ptype} (parameter {name} has shape {arr.shape}).")
            entry[name] = int(arr) if name in _INTEGER_PARAMS else float(arr)
        profiles.append(entry)
    return profiles


def dumps_lens_config(lens: AbstractLens) -> str:
    """TOML text for a lens Module (floats written with ``repr``, so reading it back is exact)."""
    lines = []
    for table, entries in lens_to_config(lens).items():
        for entry in entries:
            lines.append(f"[[{table}]]")
            lines.append(f'type = "{entry["type"]}"')
            for name, value in entry.items():
                if name != "type":
                    lines.append(f"{name} = {value!r}")
            lines.append("")
    return "\n".join(lines)


def load_lens_config(path: str | os.PathLike) -> AbstractLens:
    """Read a lens TOML file and build the lens."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"lens config {path} does not exist.")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    try:
        return lens_from_config(config)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def save_lens_config(lens: AbstractLens, path: str | os.PathLike) -> Path:
    """Write a lens Module to a TOML file; returns the path."""
    path = Path(path)
    path.write_text(dumps_lens_config(lens))
    return path
