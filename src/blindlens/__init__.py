"""blindlens: blind strong-lens inversion with a score-based source prior, as a NumPyro plugin.

Public names are loaded lazily (PEP 562), so ``import blindlens`` stays fast and does not pull in
NumPyro, diffrax or ArviZ until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

_EXPORTS: dict[str, str] = {
    # geometry and lenses
    "PixelGrid": "grid",
    "AbstractLens": "lens_models",
    "CompositeLens": "lens_models",
    "SIS": "lens_models",
    "SIE": "lens_models",
    "EPL": "lens_models",
    "ExternalShear": "lens_models",
    "Multipole": "lens_models",
    "critical_curves_and_caustics": "lens_models",
    # forward model and data
    "AbstractLinearOperator": "linear_operator",
    "DenseOperator": "linear_operator",
    "LensingOperator": "lensing_operator",
    "lensed_image": "lensing_operator",
    "PSF": "psf",
    "gaussian_psf": "psf",
    "Observation": "observation",
    "load_observation": "observation",
    "save_observation": "observation",
    "load_survey_observation": "survey_fits",
    "save_survey_fits": "survey_fits",
    "write_fits_products": "survey_fits",
    "load_lens_config": "lens_config",
    "save_lens_config": "lens_config",
    "simulate_observation": "simulation",
    "load_truth": "simulation",
    # diffusion prior
    "VESDE": "diffusion_sde",
    "sample_reverse_diffusion": "diffusion_sde",
    "AbstractSourcePrior": "source_prior",
    "ScorePrior": "score_prior",
    "ScoreUNet": "score_network",
    "ScoreNetworkConfig": "score_network",
    "train_score_prior": "training",
    "TrainingConfig": "training",
    "morphology_summaries": "morphology",
    # analytic priors, likelihood scores, source posterior
    "GaussianSourcePrior": "gaussian_prior",
    "GaussianMixtureSourcePrior": "gaussian_prior",
    "CLA": "likelihood_score",
    "PiGDM": "likelihood_score",
    "CalibratedTweedie": "likelihood_score",
    "ExactGaussianLikelihoodScore": "likelihood_score",
    "SourceSamplerConfig": "source_posterior",
    "sample_source_posterior": "source_posterior",
    "fixed_lens_posterior": "source_posterior",
    "source_refresh": "source_posterior",
    "TwistedSMCConfig": "twisted_smc",
    "twisted_smc": "twisted_smc",
    "sample_source_posterior_smc": "twisted_smc",
    "SplitGibbsConfig": "split_gibbs",
    "split_gibbs_move": "split_gibbs",
    "sample_source_posterior_split_gibbs": "split_gibbs",
    # joint inference (NumPyro) and results (ArviZ)
    "sie_shear": "numpyro_model",
    "epl_shear": "numpyro_model",
    "epl_shear_multipole": "numpyro_model",
    "joint_model": "numpyro_model",
    "BlindLensGibbs": "gibbs_kernel",
    "LensNUTS": "lens_block",
    "EvidenceSearchConfig": "lens_initialization",
    "search_lens_by_evidence": "lens_initialization",
    "tarp_coverage": "validation",
    "GibbsDDRMConfig": "gibbsddrm",
    "sample_gibbsddrm": "gibbsddrm",
    "pooled_chain_starts": "chain_starts",
    "reset_worse_chains": "chain_starts",
    "run_chains": "chain_runner",
    "ConvergenceTarget": "chain_runner",
    "ChainRun": "chain_runner",
    "to_inference_data": "arviz_conversion",
    # deflector light
    "SersicEllipse": "light_profiles",
    "LensLight": "light_profiles",
    "LensWithLight": "light_profiles",
    "LensLightImager": "light_profiles",
    "with_lens_light": "lens_light_model",
    "lens_light_priors": "lens_light_model",
    "amp_scale_of": "lens_light_model",
    # lenstronomy interoperability
    "to_lenstronomy": "lenstronomy_bridge",
    "from_lenstronomy": "lenstronomy_bridge",
    "to_lenstronomy_kwargs": "lenstronomy_bridge",
    "lens_from_posterior": "lenstronomy_bridge",
    "to_lenstronomy_light": "lenstronomy_bridge",
    "from_lenstronomy_light": "lenstronomy_bridge",
    "check_run": "run_diagnostics",
    "RunReport": "run_diagnostics",
    "BlindLensRunWarning": "run_diagnostics",
    # one lens from Python (blindlens sample) and catalogues on Dask (blindlens catalogue)
    "SampleOptions": "pipeline",
    "sample_observation": "pipeline",
    "run_catalogue": "catalogue",
    "GibbsCore": "gibbs_core",
    "GibbsCoreState": "gibbs_core",
    "SweepInfo": "gibbs_core",
    "sample_batch": "lens_batch",
    "BatchDraws": "lens_batch",
    "stack_models": "lens_batch",
    "batch_inference_data": "lens_batch",
    "sample_observations_batch": "batch_pipeline",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'blindlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for static analysers only
    from .diffusion_sde import VESDE, sample_reverse_diffusion  # noqa: F401
    from .grid import PixelGrid  # noqa: F401
    from .lens_models import EPL, SIE, SIS, AbstractLens, CompositeLens, ExternalShear, Multipole  # noqa: F401
    from .lensing_operator import LensingOperator  # noqa: F401
    from .observation import Observation, load_observation, save_observation  # noqa: F401
    from .score_prior import ScorePrior  # noqa: F401
