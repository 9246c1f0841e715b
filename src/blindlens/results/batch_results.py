"""InferenceData of a batch of lenses (:func:`blindlens.sample_batch`): one per lens, as a single run's."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..inference.numpyro_model import SOURCE_SITE, JointModel
from ..physics.grid import PixelGrid
from .arviz_conversion import to_inference_data

__all__ = ["batch_inference_data"]


class _KernelView(NamedTuple):
    """What :func:`blindlens.arviz_conversion.to_inference_data` reads of a kernel."""

    joint_model: JointModel
    source_grid: PixelGrid


def batch_inference_data(
    draws,
    index: int,
    model: JointModel,
    observation,
    source_grid: PixelGrid,
    **kwargs,
):
    """InferenceData of lens ``index`` of a :func:`blindlens.sample_batch` run (its
    :class:`~blindlens.inference.lens_batch.BatchDraws`): the same groups as a single-lens run.

    ``model`` and ``observation`` are that lens's; ``kwargs`` go to
    :func:`blindlens.arviz_conversion.to_inference_data` (``truth``, ``predictive``, ...).
    """
    if draws.source is None:
        raise ValueError("batch_inference_data needs the source draws: run sample_batch with keep_source=True.")

    def take(v):
        return np.asarray(v[index])

    posterior = {k: take(v) for k, v in draws.lens.items()}
    posterior[SOURCE_SITE] = take(draws.source)
    info = draws.info
    stats = {
        "accept_prob": take(info.accept_prob),
        "diverging": take(info.diverging),
        "potential_energy": take(info.potential_energy),
        "adapt_state.step_size": take(info.step_size),
        "num_steps": take(info.num_steps),
        "num_score_evals": take(info.num_score_evals),
        "chi2": take(info.chi2),
    }
    return to_inference_data(posterior, observation, kernel=_KernelView(model, source_grid), sample_stats=stats, **kwargs)
