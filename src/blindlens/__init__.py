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
    "PixelGrid": "physics.grid",
    "AbstractLens": "physics.lens_models",
    "CompositeLens": "physics.lens_models",
    "SIS": "physics.lens_models",
    "SIE": "physics.lens_models",
    "EPL": "physics.lens_models",
    "ExternalShear": "physics.lens_models",
    "Multipole": "physics.lens_models",
    "Shift": "physics.lens_models",
    "critical_curves_and_caustics": "physics.lens_models",
    # forward model and data
    "AbstractLinearOperator": "physics.linear_operator",
    "DenseOperator": "physics.linear_operator",
    "LensingOperator": "physics.lensing_operator",
    "lensed_image": "physics.lensing_operator",
    "PSF": "physics.psf",
    "gaussian_psf": "physics.psf",
    "Observation": "io.observation",
    "load_observation": "io.observation",
    "save_observation": "io.observation",
    "load_survey_observation": "io.survey_fits",
    "save_survey_fits": "io.survey_fits",
    "write_fits_products": "io.survey_fits",
    "load_lens_config": "io.lens_config",
    "save_lens_config": "io.lens_config",
    "simulate_observation": "io.simulation",
    "load_truth": "io.simulation",
    # diffusion prior
    "VESDE": "prior.diffusion_sde",
    "sample_reverse_diffusion": "prior.diffusion_sde",
    "AbstractSourcePrior": "prior.source_prior",
    "ScorePrior": "prior.score_prior",
    "ScoreUNet": "prior.score_network",
    "ScoreNetworkConfig": "prior.score_network",
    "train_score_prior": "prior.training",
    "TrainingConfig": "prior.training",
    "morphology_summaries": "prior.morphology",
    # analytic priors, likelihood scores, source posterior
    "GaussianSourcePrior": "prior.gaussian_prior",
    "GaussianMixtureSourcePrior": "prior.gaussian_prior",
    "CLA": "source.likelihood_score",
    "PiGDM": "source.likelihood_score",
    "CalibratedTweedie": "source.likelihood_score",
    "ExactGaussianLikelihoodScore": "source.likelihood_score",
    "SourceSamplerConfig": "source.source_posterior",
    "sample_source_posterior": "source.source_posterior",
    "fixed_lens_posterior": "source.source_posterior",
    "source_refresh": "source.source_posterior",
    "TwistedSMCConfig": "source.twisted_smc",
    "twisted_smc": "source.twisted_smc",
    "sample_source_posterior_smc": "source.twisted_smc",
    "SplitGibbsConfig": "source.split_gibbs",
    "split_gibbs_move": "source.split_gibbs",
    "sample_source_posterior_split_gibbs": "source.split_gibbs",
    "sample_source_posterior_tempered": "source.tempered_split_gibbs",
    # joint inference (NumPyro) and results (ArviZ)
    "sie_shear": "inference.numpyro_model",
    "epl_shear": "inference.numpyro_model",
    "epl_shear_multipole": "inference.numpyro_model",
    "joint_model": "inference.numpyro_model",
    "BlindLensGibbs": "inference.gibbs_kernel",
    "LensNUTS": "inference.lens_block",
    "EvidenceSearchConfig": "inference.lens_initialization",
    "search_lens_by_evidence": "inference.lens_initialization",
    "tarp_coverage": "results.validation",
    "GibbsDDRMConfig": "inference.gibbsddrm",
    "sample_gibbsddrm": "inference.gibbsddrm",
    "pooled_chain_starts": "inference.chain_starts",
    "reset_worse_chains": "inference.chain_starts",
    "run_chains": "inference.chain_runner",
    "ConvergenceTarget": "inference.chain_runner",
    "ChainRun": "inference.chain_runner",
    "to_inference_data": "results.arviz_conversion",
    # deflector light
    "SersicEllipse": "physics.light_profiles",
    "LensLight": "physics.light_profiles",
    "LensWithLight": "physics.light_profiles",
    "LensLightImager": "physics.light_profiles",
    "with_lens_light": "inference.lens_light_model",
    "lens_light_priors": "inference.lens_light_model",
    "amp_scale_of": "inference.lens_light_model",
    "with_source_shift": "inference.source_shift_model",
    # lenstronomy interoperability
    "to_lenstronomy": "results.lenstronomy_bridge",
    "from_lenstronomy": "results.lenstronomy_bridge",
    "to_lenstronomy_kwargs": "results.lenstronomy_bridge",
    "lens_from_posterior": "results.lenstronomy_bridge",
    "to_lenstronomy_light": "results.lenstronomy_bridge",
    "from_lenstronomy_light": "results.lenstronomy_bridge",
    "check_run": "results.run_diagnostics",
    "RunReport": "results.run_diagnostics",
    "BlindLensRunWarning": "results.run_diagnostics",
    # one lens from Python (blindlens sample) and catalogues on Dask (blindlens catalogue)
    "SampleOptions": "pipeline",
    "sample_observation": "pipeline",
    "run_catalogue": "catalogue",
    "GibbsCore": "inference.gibbs_core",
    "GibbsCoreState": "inference.gibbs_core",
    "SweepInfo": "inference.gibbs_core",
    "sample_batch": "inference.lens_batch",
    "BatchDraws": "inference.lens_batch",
    "stack_models": "inference.lens_batch",
    "batch_inference_data": "results.batch_results",
    "sample_observations_batch": "batch_pipeline",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


# Modules moved into the layer subpackages (physics/, io/, prior/, source/, inference/, results/)
# keep importing under their old names (``blindlens.grid`` is ``blindlens.physics.grid``, the same
# module object), so user code, pickles and saved references keep working.
_MOVED: dict[str, str] = {
    "arviz_conversion": "results.arviz_conversion",
    "chain_runner": "inference.chain_runner",
    "chain_starts": "inference.chain_starts",
    "diffusion_sde": "prior.diffusion_sde",
    "galaxies": "prior.galaxies",
    "gaussian_prior": "prior.gaussian_prior",
    "gibbs_core": "inference.gibbs_core",
    "gibbs_kernel": "inference.gibbs_kernel",
    "gibbsddrm": "inference.gibbsddrm",
    "grid": "physics.grid",
    "image_sets": "io.image_sets",
    "lens_batch": "inference.lens_batch",
    "lens_block": "inference.lens_block",
    "lens_config": "io.lens_config",
    "lens_initialization": "inference.lens_initialization",
    "lens_light_model": "inference.lens_light_model",
    "lens_models": "physics.lens_models",
    "lens_space": "inference.lens_space",
    "lensing_operator": "physics.lensing_operator",
    "lenstronomy_bridge": "results.lenstronomy_bridge",
    "light_profiles": "physics.light_profiles",
    "likelihood_score": "source.likelihood_score",
    "linear_operator": "physics.linear_operator",
    "morphology": "prior.morphology",
    "numpyro_model": "inference.numpyro_model",
    "observation": "io.observation",
    "parametric_prefit": "inference.parametric_prefit",
    "posterior_figures": "results.posterior_figures",
    "posterior_products": "results.posterior_products",
    "psf": "physics.psf",
    "run_checkpoint": "io.run_checkpoint",
    "run_diagnostics": "results.run_diagnostics",
    "score_network": "prior.score_network",
    "score_prior": "prior.score_prior",
    "simulation": "io.simulation",
    "source_moves": "inference.source_moves",
    "source_posterior": "source.source_posterior",
    "source_prior": "prior.source_prior",
    "split_gibbs": "source.split_gibbs",
    "tempered_split_gibbs": "source.tempered_split_gibbs",
    "survey_fits": "io.survey_fits",
    "training": "prior.training",
    "twisted_smc": "source.twisted_smc",
    "validation": "results.validation",
}


class _MovedModuleFinder:
    """Meta-path finder: ``blindlens.<old>`` resolves to the module now at ``blindlens.<new>``."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        prefix, _, rest = fullname.partition(".")
        if prefix != __name__ or not rest:
            return None
        head, _, tail = rest.partition(".")
        if head not in _MOVED:
            return None
        import importlib.util

        new = f"{__name__}.{_MOVED[head]}" + (f".{tail}" if tail else "")
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


class _AliasLoader:
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.real_spec = module.__spec__  # importlib overwrites it with the alias's spec next
        return module

    def exec_module(self, module):
        module.__spec__ = self.real_spec


import sys as _sys  # noqa: E402

if not any(isinstance(f, _MovedModuleFinder) or f is _MovedModuleFinder for f in _sys.meta_path):
    _sys.meta_path.insert(0, _MovedModuleFinder)  # before the path finder: submodules of moved packages


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
    from .io.observation import Observation, load_observation, save_observation  # noqa: F401
    from .physics.grid import PixelGrid  # noqa: F401
    from .physics.lens_models import (  # noqa: F401
        EPL,
        SIE,
        SIS,
        AbstractLens,
        CompositeLens,
        ExternalShear,
        Multipole,
        Shift,
    )
    from .physics.lensing_operator import LensingOperator  # noqa: F401
    from .prior.diffusion_sde import VESDE, sample_reverse_diffusion  # noqa: F401
    from .prior.score_prior import ScorePrior  # noqa: F401
