"""Loading user-supplied training image sets of shape ``(N, H, W)``.

Supported: ``.npy``; ``.npz`` (key ``images``, or the only array); FITS cubes (primary HDU or
the first image extension, ``NAXIS = 3``); HDF5 (dataset ``images``, or the only 3-d dataset);
and a directory of ``.npy`` chunks (concatenated in name order, as written by
``blindlens make-galaxies``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_image_set", "bin_images"]


def _check(images: np.ndarray, source: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"{source}: expected an image set of shape (N, H, W), got shape {images.shape}.")
    if images.shape[1] != images.shape[2] or images.shape[1] & (images.shape[1] - 1):
        raise ValueError(
            f"{source}: images must be square with a power-of-two side (e.g. 64x64), got "
            f"{images.shape[1]}x{images.shape[2]}; crop or resample them first."
        )
    if not np.all(np.isfinite(images)):
        bad = int(np.sum(~np.all(np.isfinite(images), axis=(1, 2))))
        raise ValueError(f"{source}: {bad} images contain NaN or infinite pixels; remove or fix them.")
    return images.astype(np.float32)


def load_image_set(path: str | Path) -> np.ndarray:
    """Read an image set from ``path``; returns float32 ``(N, H, W)``. See the module docstring."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.npy") if not p.name.endswith(".tmp.npy"))
        if not files:
            raise FileNotFoundError(f"{path} holds no .npy image chunks.")
        return _check(np.concatenate([np.load(f) for f in files]), str(path))
    if not path.is_file():
        raise FileNotFoundError(f"No image set at {path}.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _check(np.load(path), str(path))
    if suffix == ".npz":
        with np.load(path) as f:
            keys = list(f.keys())
            if "images" in keys:
                return _check(f["images"], str(path))
            if len(keys) == 1:
                return _check(f[keys[0]], str(path))
        raise ValueError(f"{path}: .npz image sets need a key 'images' (found {keys}).")
    if suffix in (".fits", ".fit", ".fz"):
        from .observation import read_fits_array

        return _check(read_fits_array(path, ndim=3), str(path))
    if suffix in (".h5", ".hdf5", ".hdf"):
        import h5py

        with h5py.File(path, "r") as f:
            if "images" in f:
                return _check(f["images"][...], str(path))
            cubes = [k for k in f if isinstance(f[k], h5py.Dataset) and f[k].ndim == 3]
            if len(cubes) == 1:
                return _check(f[cubes[0]][...], str(path))
        raise ValueError(f"{path}: HDF5 image sets need a 3-d dataset named 'images'.")
    raise ValueError(
        f"{path}: unsupported image-set format {suffix!r}; use .npy, .npz, .fits or .h5 of shape (N, H, W)."
    )


def bin_images(images: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` pixel blocks of ``(..., H, W)`` images (surface brightness kept).

    Used to put galaxies sampled finer than a prior's grid onto it (e.g. 0.05"/pixel stamps on a
    0.1"/pixel prior: ``factor = 2``). ``H`` and ``W`` must be multiples of ``factor``.
    """
    images = np.asarray(images)
    factor = int(factor)
    h, w = images.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"cannot bin {h}x{w} images by {factor}: the factor must be >= 1 and divide both sides.")
    return images.reshape(*images.shape[:-2], h // factor, factor, w // factor, factor).mean(axis=(-3, -1))
