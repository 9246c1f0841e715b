"""Test oracles with known answers, for blindlens's own tests, studies and benchmarks, and for users
checking a sampler: problems whose posteriors are exact.

* :mod:`blindlens.testing.lensed_gaussian`: a 16x16 Gaussian-process source lensed by an SIS into
  24x24 pixels, with a dense operator (exact Gaussian posterior), a Gaussian-mixture variant and
  the calibration metrics (whitened chi^2, mode weights) with their Monte-Carlo bands.
* :mod:`blindlens.testing.gold_problem`: the joint gold standard, a low-rank Gaussian source prior
  whose lens marginal ``p(theta | y)`` is analytic (``Problem``), and the exact likelihood score in
  the prior's basis (``LowRankExactGuidance``), the exact marginal on a grid
  (``exact_theta_e_marginal``) and the check of chain draws against it (``gold_check``, ``mcse_sd``,
  bounds ``Z_99`` and ``KS_99``).

References: docs of the validation plan (data-and-validation.md §B.2).
"""
