"""Input and output: observations, survey FITS, lens files, simulated observations, run checkpoints."""
