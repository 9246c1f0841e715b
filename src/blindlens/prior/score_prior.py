"""The trained score-based source prior: a score network, its VE SDE and its units.

A :class:`ScorePrior` turns a :class:`~blindlens.score_network.ScoreUNet` trained on galaxy
images into an :class:`~blindlens.source_prior.AbstractSourcePrior` in the *physical* units of
an observation. Training images live in "network units"; ``flux_scale`` converts them to image
units (a source pixel in image units is ``flux_scale`` times a network-unit pixel), so

    score_phys(x, t) = score_net(x / flux_scale, sigma_net(t)) / flux_scale,
    sigma_phys(t)    = flux_scale * sigma_net(t).

Files are a one-line JSON header followed by ``eqx.tree_serialise_leaves`` bytes; the header
holds the architecture, the SDE, the image size and pixel scale of the training set, the pixel
normalisation and a training record. :meth:`ScorePrior.default` loads the prior shipped inside
the package (no network access).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax.random as jr

from .._types import Array, Float
from .diffusion_sde import VESDE
from .score_network import ScoreNetworkConfig, ScoreUNet
from .source_prior import AbstractSourcePrior

__all__ = ["ScorePrior", "DEFAULT_PRIOR_RESOURCE", "SHIPPED_PRIORS", "SHIPPED_PIXEL_SCALES", "AUTO_PRIOR",
           "SOURCE_TO_DATA_PIXEL", "choose_shipped_prior"]

DEFAULT_PRIOR_RESOURCE = "default_prior.eqx"
SHIPPED_PRIORS = {
    "default": DEFAULT_PRIOR_RESOURCE,  # 32 x 32 at 0.1"/pixel, disk population
    "highres": "prior_64.eqx",  # 64 x 64 at 0.05"/pixel, broad population (sub-pixel stem)
    "fine": "prior_128.eqx",  # 128 x 128 at 0.025"/pixel, broad population (sub-pixel stem)
}
"""Priors shipped inside the package, by name (``ScorePrior.shipped(name)``, ``--prior NAME``)."""
SHIPPED_PIXEL_SCALES = {"default": 0.1, "highres": 0.05, "fine": 0.025}
"""Source pixel scale [arcsec] of each shipped prior (checked against the files by the tests)."""
AUTO_PRIOR = "auto"
"""The prior spec that picks a shipped prior by the data's pixel scale (:func:`choose_shipped_prior`)."""


SOURCE_TO_DATA_PIXEL = 1.0
"""The source pixel ``--prior auto`` aims for, as a fraction of the data's pixel (issue 14): 1, the
data's own. 0.5 (the 0.025" ``"fine"`` prior on 0.05" data) won on four lenstronomy cold starts but
fits the bundled HST example worse (see :func:`choose_shipped_prior`), so it is not the default."""


def choose_shipped_prior(pixel_scale: float) -> str:
    """The shipped prior whose source pixels are nearest ``SOURCE_TO_DATA_PIXEL`` times the data's
    pixel (in log scale): with 1, the data's own.

    A source prior coarser than the data biases the lens by many posterior widths (the 0.1"/pixel
    prior on 0.05"/pixel data). A prior at half the data's pixel (``"fine"``, 0.025", on 0.05"
    data) took the lens z-scores' spread from 2.9 to 1.3 on four lenstronomy cold starts
    (docs/joint_inference.md), but on the bundled HST example (``blindlens example``: bright
    deflector, blocky source) it fits at chi^2/N 1.30 against the 0.05" prior's 1.11, with mass
    z-scores up to 4.5 (docs/real_data.md), and on held-out system 47 (point-like knots) its rms z was
    5.3 against 4.1, so it is opt-in (``--prior fine``). Sends data finer than 0.0354"/pixel to
    ``"fine"``, data up to 0.0707"/pixel to ``"highres"`` (0.05") and coarser data to
    ``"default"`` (0.1").

    Parameters
    ----------
    pixel_scale
        The observation's pixel scale [arcsec/pixel].

    Returns
    -------
    str
        A key of :data:`SHIPPED_PRIORS`.
    """
    if not (math.isfinite(pixel_scale) and pixel_scale > 0):
        raise ValueError(f"pixel_scale must be positive and finite (arcsec/pixel), got {pixel_scale}.")
    target = SOURCE_TO_DATA_PIXEL * pixel_scale
    return min(SHIPPED_PIXEL_SCALES, key=lambda name: (abs(math.log(SHIPPED_PIXEL_SCALES[name] / target)),
                                                       name != "default"))


_FORMAT = "blindlens-score-prior"


class ScorePrior(AbstractSourcePrior):
    """A diffusion prior on source images backed by a trained score network.

    Parameters
    ----------
    network
        The score network (network units).
    network_sde
        The VE SDE the network was trained with (network units).
    source_pixel_scale
        Source-plane pixel scale in arcsec/pixel at which the prior is applied (by default the
        training set's; galaxies are roughly scale-free, so it may be changed with
        :meth:`with_pixel_scale`).
    flux_scale
        Image units per network unit.
    metadata
        Free-form training record from the file header.
    grid_size
        Source grid side in pixels, ``None`` for the training stamps' own. The network is fully
        convolutional, so a wider field at the same pixel scale (:meth:`with_grid_size`) holds a
        source that runs past the training stamp.
    """

    network: ScoreUNet
    network_sde: VESDE
    source_pixel_scale: float = eqx.field(static=True)
    flux_scale: float = eqx.field(static=True, default=1.0)
    metadata: dict = eqx.field(static=True, default_factory=dict)
    grid_size: int | None = eqx.field(static=True, default=None)

    @property
    def sde(self) -> VESDE:
        fs = self.flux_scale
        return VESDE(self.network_sde.sigma_min * fs, self.network_sde.sigma_max * fs)

    @property
    def shape(self) -> tuple[int, int]:
        n = self.network.config.image_size if self.grid_size is None else self.grid_size
        return (n, n)

    @property
    def grid_multiple(self) -> int:
        """The side of a source grid must be a multiple of this (the network's total down-sampling)."""
        config = self.network.config
        return config.pixel_unshuffle * 2 ** (len(config.channels) - 1)

    @property
    def pixel_scale(self) -> float:
        return self.source_pixel_scale

    def score(self, x: Float[Array, "sy sx"], t) -> Float[Array, "sy sx"]:
        fs = self.flux_scale
        return self.network.score(x / fs, self.network_sde.sigma(t)) / fs

    def denoise(self, x: Float[Array, "sy sx"], t) -> Float[Array, "sy sx"]:
        fs = self.flux_scale
        return fs * self.network.denoise(x / fs, self.network_sde.sigma(t))

    def with_flux_scale(self, flux_scale: float) -> ScorePrior:
        """The same prior with sources ``flux_scale`` times brighter (image units per network unit)."""
        if not flux_scale > 0:
            raise ValueError(f"flux_scale must be positive, got {flux_scale}.")
        return dataclasses.replace(self, flux_scale=float(flux_scale))

    def with_pixel_scale(self, pixel_scale: float) -> ScorePrior:
        """The same prior applied on a source grid of ``pixel_scale`` arcsec/pixel."""
        if not pixel_scale > 0:
            raise ValueError(f"pixel_scale must be positive (arcsec/pixel), got {pixel_scale}.")
        return dataclasses.replace(self, source_pixel_scale=float(pixel_scale))

    def with_grid_size(self, size: int) -> ScorePrior:
        """The same prior on a ``size`` x ``size`` source grid at the same pixel scale.

        The score network is fully convolutional: on a grid wider than its training stamps it
        denoises a held-out galaxy within 6-19% of the error it makes on the training stamp's own
        grid at the noise levels of a posterior draw (``docs/prior.md``), so a source that runs
        past the stamp keeps its resolution. ``size`` must be a multiple of :attr:`grid_multiple`.
        """
        size = int(size)
        m = self.grid_multiple
        if size < m or size % m:
            raise ValueError(f"the source grid side must be a multiple of {m} pixels for this prior (its network "
                             f"down-samples by {m}), got {size}; e.g. {max(m, -(-size // m) * m)}.")
        return dataclasses.replace(self, grid_size=None if size == self.network.config.image_size else size)

    # --- serialisation -----------------------------------------------------------------------

    def header(self) -> dict:
        return {
            "format": _FORMAT,
            "version": 1,
            "architecture": self.network.config.to_dict(),
            "sde": {"type": "VE", "sigma_min": self.network_sde.sigma_min, "sigma_max": self.network_sde.sigma_max},
            "image_size": self.network.config.image_size,
            "pixel_scale": self.source_pixel_scale,
            "normalisation": {"flux_scale": self.flux_scale},
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> None:
        """Write the prior to ``path`` (JSON header line + serialised leaves)."""
        with open(path, "wb") as f:
            f.write((json.dumps(self.header()) + "\n").encode())
            eqx.tree_serialise_leaves(f, self.network)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>") -> ScorePrior:
        newline = data.find(b"\n")
        try:
            if newline < 0:
                raise ValueError
            header = json.loads(data[:newline].decode())
            if not isinstance(header, dict) or header.get("format") != _FORMAT:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise ValueError(
                f"{source} is not a blindlens score-prior file (expected a JSON header line with "
                f"format={_FORMAT!r}); create one with `blindlens train-prior`."
            ) from None
        try:
            config = ScoreNetworkConfig.from_dict(header["architecture"])
            sde = VESDE(float(header["sde"]["sigma_min"]), float(header["sde"]["sigma_max"]))
            pixel_scale = float(header["pixel_scale"])
            flux_scale = float(header.get("normalisation", {}).get("flux_scale", 1.0))
            metadata = header.get("metadata", {})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                f"{source}: the score-prior header is incomplete or malformed ({type(err).__name__}: {err}); "
                "re-create the file with `blindlens train-prior`."
            ) from None
        # shapes only: initialising the network's weights just to overwrite them took ~17 s on a loaded CPU
        skeleton = eqx.filter_eval_shape(ScoreUNet, config, key=jr.key(0))
        stream = io.BytesIO(data[newline + 1 :])
        try:
            network = eqx.tree_deserialise_leaves(stream, skeleton)
        except Exception:  # untrusted bytes: truncated or damaged weights
            raise ValueError(
                f"{source}: the score-prior weights are truncated or damaged (they end early or do not match "
                "the header's architecture); re-create the file with `blindlens train-prior` or copy it again."
            ) from None
        if stream.read(1):
            raise ValueError(
                f"{source}: the score-prior file has unexpected bytes after its weights (damaged, or written "
                "for another architecture); re-create it with `blindlens train-prior`."
            )
        return cls(
            network=network,
            network_sde=sde,
            source_pixel_scale=pixel_scale,
            flux_scale=flux_scale,
            metadata=metadata,
        )

    @classmethod
    def load(cls, path: str | Path) -> ScorePrior:
        """Read a prior written by :meth:`save` or by ``blindlens train-prior``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No score-prior file at {path}.")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    @classmethod
    def shipped(cls, name: str = "default") -> ScorePrior:
        """A prior shipped with blindlens, by name (:data:`SHIPPED_PRIORS`).

        ``"default"``: 32 x 32 source pixels of 0.1" (a 3.2" field), trained on the disk
        population (docs/prior.md). ``"highres"``: 64 x 64 pixels of 0.05" (the same field at the
        resolution of HST-like data), the default network lifted with a sub-pixel stem and
        fine-tuned on the broad population (docs/prior.md). ``"fine"``: 128 x 128 pixels of
        0.025" (the same field again), the ``"highres"`` network fine-tuned on broad galaxies
        drawn at 0.025" (docs/prior.md); each network pass costs about 4x ``"highres"``'s.
        """
        if name not in SHIPPED_PRIORS:
            raise ValueError(
                f"unknown shipped prior {name!r}; choose one of {sorted(SHIPPED_PRIORS)} or pass a prior file."
            )
        resource = resources.files("blindlens") / "data" / SHIPPED_PRIORS[name]
        if not resource.is_file():
            raise FileNotFoundError(
                f"The shipped score prior {name!r} is missing from this installation "
                f"(blindlens/data/{SHIPPED_PRIORS[name]}); reinstall blindlens or pass a prior file."
            )
        return cls.from_bytes(resource.read_bytes(), source=f"blindlens/data/{SHIPPED_PRIORS[name]}")

    @classmethod
    def default(cls) -> ScorePrior:
        """The default shipped prior (32 x 32 procedural GalSim galaxies at 0.1"/pixel)."""
        return cls.shipped("default")
