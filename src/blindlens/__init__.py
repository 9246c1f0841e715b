"""blindlens: blind strong-lens inversion with a score-based source prior."""
__version__ = "0.1.0.dev0"
