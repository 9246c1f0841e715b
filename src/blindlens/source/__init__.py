"""The source for a fixed lens: likelihood scores (guidance), posterior draws, exact split-Gibbs moves, twisted SMC."""
