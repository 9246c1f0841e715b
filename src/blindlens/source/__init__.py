"""The source for a fixed lens: likelihood scores (guidance), posterior draws, exact split-Gibbs moves, twisted SMC."""

GUIDANCE_NAMES: tuple[str, ...] = ("pigdm", "calibrated", "cla")
"""Names of the built-in guidance rules (``--guidance``; :func:`blindlens.source.likelihood_score.guidance_by_name`).
Here, in the light package module, so that the command line's parser needs no JAX import."""

