"""Checkpoints of ``blindlens sample`` runs, run fingerprints and checks of output paths.

A checkpoint is one ``.npz`` archive, read with ``numpy.load(..., allow_pickle=False)``: nothing
in it is ever unpickled, so a planted file cannot run code. It holds

``meta``
    UTF-8 JSON (as a ``uint8`` array): the format name and version, the run's *fingerprint*,
    the number of draws per chain done, and the names and kinds of the arrays below.
``state_<i>``
    The leaves of the MCMC state pytree (``jax.tree_util.tree_leaves`` order; PRNG keys as their
    raw ``key_data`` with the key implementation named in ``meta``). The tree structure is *not*
    stored: a resumed run re-assembles the state with the structure of a template state that it
    builds itself (:func:`restore_state`), and refuses a checkpoint whose leaf count, shapes or
    dtypes do not fit.
``z_<i>``, ``sample_<i>``, ``stat_<i>``
    The state's sample-site values (the initial parameters of a resumed run) and the draws and
    sample statistics collected so far, grouped by chain.

A checkpoint is written atomically (a temporary file in the same directory, then
:func:`os.replace`), so an interrupted write leaves the previous checkpoint intact.

The *fingerprint* is a flat JSON object naming everything that defines a run (input file
digests, the lens model, the prior, every sampling setting, the seed and the package version).
A checkpoint whose fingerprint differs from the current run's is refused with a message naming
what differs (:func:`check_fingerprint`), so a rerun with another observation or seed never
returns an old posterior.

Every problem with a checkpoint raises :class:`CheckpointError` (a ``ValueError``, which the
command line reports as a one-line error with exit status 2).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CheckpointError",
    "RunCheckpoint",
    "FORMAT",
    "VERSION",
    "checkpoint_path",
    "legacy_checkpoint_path",
    "file_sha256",
    "tree_sha256",
    "prior_fingerprint",
    "save_checkpoint",
    "load_checkpoint",
    "check_fingerprint",
    "restore_state",
    "append_draws",
    "check_output_paths",
    "check_output_dir",
    "FIGURE_SUFFIXES",
]

FORMAT = "blindlens-run-checkpoint"
VERSION = 2
"""2 (2026-12-06): the kernel's state is the pure core's (``BlindLensGibbsState``); version 1 held NumPyro
Gibbs block states, which this kernel cannot continue."""
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_HINT = "pass --no-resume to start afresh (or delete the file)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, of another format, or from another run."""


@dataclass(frozen=True)
class RunCheckpoint:
    """The data of a checkpoint as read by :func:`load_checkpoint` (NumPy arrays and JSON values only).

    Attributes
    ----------
    path
        The file it was read from.
    fingerprint
        The run fingerprint it was written with.
    done
        Draws per chain completed (before thinning).
    state_leaves
        Leaves of the MCMC state; PRNG keys as raw key data.
    state_keys
        For each leaf, the PRNG key implementation name, or ``None`` for an ordinary array.
    init_params
        The state's sample-site values (``state.z``), by site name.
    samples, stats
        Draws and sample statistics collected so far, by name, shape ``(chains, draws, ...)``;
        empty before the first chunk.
    extra_warmup
        Sweeps per chain run after the warm-up and discarded because chains were still settling
        (:mod:`blindlens.inference.settling`); 0 in checkpoints written before the check.
    settle_reference
        ``(chains, sweeps)`` potential energy of the last window a settling check compared
        against, or ``None``.
    """

    path: Path
    fingerprint: dict
    done: int
    state_leaves: list = field(repr=False)
    state_keys: list = field(repr=False)
    init_params: dict = field(repr=False)
    samples: dict = field(repr=False)
    stats: dict = field(repr=False)
    extra_warmup: int = 0
    settle_reference: np.ndarray | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------- paths


def checkpoint_path(out: str | os.PathLike) -> Path:
    """The checkpoint file of the run writing ``out``: ``<out>.ckpt.npz`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt.npz")


def legacy_checkpoint_path(out: str | os.PathLike) -> Path:
    """``<out>.ckpt.pkl``, the pickle checkpoint of blindlens <= 0.1.0.dev0 (never read)."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt.pkl")


# --------------------------------------------------------------------------------- fingerprints


def file_sha256(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of the bytes of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _is_key(leaf) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def tree_sha256(tree) -> str:
    """``"sha256:<hex>"`` of the leaves of a pytree: each leaf's dtype, shape and bytes, in order.

    PRNG-key leaves enter by their key data; ``None`` is not a leaf and is skipped. Leaves that
    are not arrays (the activation functions of a network) enter by their qualified name, never by
    their address, so the digest is the same in every process.
    """
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        if callable(leaf) and not hasattr(leaf, "dtype"):
            h.update(f"callable {getattr(leaf, '__module__', '')}.{getattr(leaf, '__qualname__', '')}".encode())
            continue
        arr = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return "sha256:" + h.hexdigest()


def prior_fingerprint(prior) -> str:
    """A digest of a source prior's content: its type, arrays, grid and units.

    Two priors with the same digest produce the same samples; a prior file re-saved with the
    same weights keeps its digest.
    """
    sde = getattr(prior, "sde", None)
    described = {
        "type": f"{type(prior).__module__}.{type(prior).__qualname__}",
        "shape": [int(n) for n in prior.shape],
        "pixel_scale": float(prior.pixel_scale),
        "flux_scale": float(getattr(prior, "flux_scale", 1.0)),
        "sde": [float(getattr(sde, "sigma_min", 0.0)), float(getattr(sde, "sigma_max", 0.0))],
        "arrays": tree_sha256(prior),
    }
    return "sha256:" + hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _normalise(fingerprint: Mapping) -> dict:
    """A fingerprint as JSON gives it back (tuples become lists), so that saved and new ones compare."""
    return json.loads(json.dumps(dict(fingerprint), sort_keys=True))


def check_fingerprint(saved: Mapping, expected: Mapping, path: str | os.PathLike) -> None:
    """Refuse a checkpoint written by another run.

    Parameters
    ----------
    saved
        The fingerprint stored in the checkpoint.
    expected
        The current run's fingerprint.
    path
        The checkpoint file (for the message).

    Raises
    ------
    CheckpointError
        If any entry differs, is missing or is new; the one-line message names each difference
        (with both values, unless they are digests) and how to start afresh.
    """
    saved, expected = _normalise(saved), _normalise(expected)
    differ = []
    for name in sorted(set(saved) | set(expected)):
        a, b = saved.get(name, "<absent>"), expected.get(name, "<absent>")
        if a == b:
            continue
        if any(isinstance(v, str) and v.startswith("sha256:") for v in (a, b)):
            differ.append(f"{name} (other content)")
        else:
            differ.append(f"{name} {json.dumps(a)} -> {json.dumps(b)}")
    if differ:
        raise CheckpointError(
            f"checkpoint {path} was written by a different run ({'; '.join(differ)}); {_HINT}."
        )


# --------------------------------------------------------------------------------- writing


def _meta_array(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)


def _data_array(value, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"cannot checkpoint {what}: it is not a numeric array (dtype object).")
    return arr


def save_checkpoint(
    path: str | os.PathLike,
    *,
    fingerprint: Mapping,
    state,
    done: int,
    samples: Mapping | None = None,
    stats: Mapping | None = None,
    extra_warmup: int = 0,
    settle_reference: np.ndarray | None = None,
) -> Path:
    """Write a checkpoint atomically; returns its path.

    Parameters
    ----------
    path
        Destination (``<out>.ckpt.npz``, :func:`checkpoint_path`).
    fingerprint
        The run fingerprint: a flat mapping of JSON-serialisable values.
    state
        The MCMC state pytree (e.g. ``mcmc.last_state``) with a ``z`` attribute holding the
        sample-site values.
    done
        Draws per chain completed.
    samples, stats
        Draws and sample statistics so far, by name, grouped by chain (``None`` or empty before
        the first chunk).
    extra_warmup, settle_reference
        Settling sweeps discarded so far and the window the next settling check compares
        against (:class:`RunCheckpoint`).
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    keys = []
    for i, leaf in enumerate(jax.tree_util.tree_leaves(state)):
        if _is_key(leaf):
            keys.append(str(jax.random.key_impl(leaf)))
            arrays[f"state_{i}"] = np.asarray(jax.random.key_data(leaf))
        else:
            keys.append(None)
            arrays[f"state_{i}"] = _data_array(leaf, f"state leaf {i}")
    z = dict(state.z)
    groups = {"z": z, "sample": dict(samples or {}), "stat": dict(stats or {})}
    names = {}
    for prefix, group in groups.items():
        names[prefix] = list(group)
        for i, (name, value) in enumerate(group.items()):
            arrays[f"{prefix}_{i}"] = _data_array(value, f"{prefix} {name!r}")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": _normalise(fingerprint),
        "done": int(done),
        "extra_warmup": int(extra_warmup),
        "state_keys": keys,
        "names": names,
    }
    if settle_reference is not None:
        arrays["settle_reference"] = _data_array(settle_reference, "settling reference")
    arrays["meta"] = _meta_array(meta)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: an interrupted write never damages the previous checkpoint
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------------- reading


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_checkpoint(path: str | os.PathLike) -> RunCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (data only; nothing is unpickled).

    Raises
    ------
    CheckpointError
        If the file is damaged or truncated, not an ``.npz`` archive (e.g. a pickle), of another
        format or version, or inconsistent; the one-line message names the file and suggests
        ``--no-resume``.
    """
    path = Path(path)

    def damaged(reason: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {path} is damaged or not a blindlens run checkpoint ({reason}); {_HINT}."
        )

    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):
            raise damaged("a single .npy array, not an .npz archive")
        with loaded as f:
            arrays = {name: f[name] for name in f.files}  # reads every member: CRC errors surface here
        meta = json.loads(bytes(arrays.pop("meta")).decode())
    except CheckpointError:
        raise
    except KeyError:
        raise damaged("no 'meta' entry") from None
    except Exception as err:  # untrusted bytes: any failure to parse them means a damaged file
        raise damaged(_reason(err)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise damaged(f"format is not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('version')!r}, this blindlens reads "
            f"version {VERSION}; {_HINT}."
        )
    try:
        keys = list(meta["state_keys"])
        names = meta["names"]
        groups = {}
        for prefix in ("z", "sample", "stat"):
            groups[prefix] = {str(n): arrays.pop(f"{prefix}_{i}") for i, n in enumerate(names[prefix])}
        leaves = [arrays.pop(f"state_{i}") for i in range(len(keys))]
        fingerprint = dict(meta["fingerprint"])
        done = int(meta["done"])
        extra_warmup = int(meta.get("extra_warmup", 0))
        reference = arrays.pop("settle_reference", None)
    except (KeyError, TypeError, ValueError) as err:
        raise damaged(f"missing or malformed entry {_reason(err)}") from None
    if arrays:
        raise damaged(f"unexpected entries {sorted(arrays)}")
    drawn = {a.shape[1] for a in (*groups["sample"].values(), *groups["stat"].values()) if a.ndim >= 2}
    if len(drawn) > 1 or (groups["sample"] and not drawn) or done < 0 or extra_warmup < 0:
        raise damaged("draw counts are inconsistent")
    if reference is not None and reference.ndim != 2:
        raise damaged("the settling reference is not a (chains, sweeps) array")
    return RunCheckpoint(path, fingerprint, done, leaves, keys, groups["z"], groups["sample"], groups["stat"],
                         extra_warmup, reference)


def restore_state(checkpoint: RunCheckpoint, template, *, num_chains: int):
    """Re-assemble the MCMC state of a checkpoint with the tree structure of ``template``.

    Parameters
    ----------
    checkpoint
        As read by :func:`load_checkpoint`.
    template
        A state of the same kernel for *one* chain (e.g. what ``kernel.init`` returns in the
        resuming process); only its structure, shapes and dtypes are used.
    num_chains
        Chains of the run; with more than one, every stored leaf carries a leading chain axis.

    Returns
    -------
    The state, a pytree of the template's structure whose leaves are the checkpoint's arrays
    (PRNG keys re-wrapped with their implementation).

    Raises
    ------
    CheckpointError
        If the number of leaves, a shape, a dtype or a key implementation does not match.
    """
    t_leaves, treedef = jax.tree_util.tree_flatten(template)
    path = checkpoint.path
    if len(t_leaves) != len(checkpoint.state_leaves):
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's sampler state (it holds {len(checkpoint.state_leaves)} "
            f"arrays, the sampler has {len(t_leaves)}: another kernel or blindlens version); {_HINT}."
        )
    batch = () if num_chains == 1 else (int(num_chains),)
    leaves = []
    for i, (t, data, impl) in enumerate(zip(t_leaves, checkpoint.state_leaves, checkpoint.state_keys)):
        shape = batch + tuple(np.shape(t))
        if _is_key(t):
            want = f"PRNG key {t.dtype} of shape {shape}"
            try:
                leaf = None if impl is None else jax.random.wrap_key_data(data, impl=impl)
            except Exception:  # wrong key-data shape/dtype or unknown implementation
                leaf = None
            got = "no key" if leaf is None else f"{leaf.dtype} of shape {leaf.shape}"
            ok = leaf is not None and leaf.dtype == t.dtype and tuple(leaf.shape) == shape
        else:
            dtype = np.dtype(jnp.result_type(t))
            want = f"{dtype} of shape {shape}"
            got = "a PRNG key" if impl is not None else f"{data.dtype} of shape {data.shape}"
            ok = impl is None and data.dtype == dtype and tuple(data.shape) == shape
            leaf = data
        if not ok:
            raise CheckpointError(
                f"checkpoint {path} does not fit this run's sampler state (array {i}: {got}, expected "
                f"{want}); {_HINT}."
            )
        leaves.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def append_draws(collected: Mapping | None, new: Mapping) -> dict:
    """``collected`` with the chunk ``new`` appended along the draw axis (axis 1); NumPy arrays."""
    new = {k: np.asarray(v) for k, v in new.items()}
    if not collected:
        return new
    if set(collected) != set(new):
        raise ValueError(f"chunk fields {sorted(new)} differ from the collected {sorted(collected)}.")
    return {k: np.concatenate([collected[k], new[k]], axis=1) for k in collected}


# --------------------------------------------------------------------------------- output paths


def check_output_dir(label: str, path: str | os.PathLike) -> Path:
    """Refuse an output directory that exists as a file; returns the path (not created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{label} {path} exists and is not a directory.")
    return path


def check_output_paths(
    outputs: Mapping[str, str | os.PathLike],
    *,
    suffixes: Mapping[str, tuple[str, ...]] | None = None,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> dict[str, Path]:
    """Refuse unusable output file paths before a run does any work.

    Parameters
    ----------
    outputs
        Every file the run writes, by a label for messages (an option name such as ``"--out"``
        or a description such as ``"summary figure"``).
    suffixes
        Allowed name endings per label (case-insensitive), e.g. ``{"--out": (".nc",)}`` or
        ``{"--plot": FIGURE_SUFFIXES}``.
    inputs
        Input files by label (``None`` entries are skipped); no output may be one of them.

    Returns
    -------
    The outputs as :class:`~pathlib.Path` objects, by label.

    Raises
    ------
    ValueError
        With a one-line message if a name ending is not allowed, a path is a directory, its
        directory does not exist or is not writable, two outputs share a path, or an output is
        an input. Existing output files are allowed (the caller documents that it replaces them).
    """
    suffixes = dict(suffixes or {})
    paths = {label: Path(p) for label, p in outputs.items()}
    for label, p in paths.items():
        allowed = suffixes.get(label)
        if allowed and not p.name.lower().endswith(tuple(s.lower() for s in allowed)):
            raise ValueError(f"{label} {p}: the file name must end in {' or '.join(allowed)}.")
        if p.is_dir():
            raise ValueError(f"{label} {p} is a directory; give a file name.")
        parent = p.parent
        if not parent.is_dir():
            raise ValueError(f"{label} {p}: directory {parent} does not exist; create it first.")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{label} {p}: directory {parent} is not writable.")
    resolved = {label: p.resolve() for label, p in paths.items()}
    seen: dict[Path, str] = {}
    for label, r in resolved.items():
        if r in seen:
            raise ValueError(f"{seen[r]} and {label} would both be written to {paths[label]}; give them different paths.")
        seen[r] = label
    for in_label, in_path in (inputs or {}).items():
        if in_path is None:
            continue
        r = Path(in_path).resolve()
        if r in seen:
            raise ValueError(f"{seen[r]} {paths[seen[r]]} would overwrite the input {in_label}; give another path.")
    return paths

