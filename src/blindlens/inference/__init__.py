"""Joint lens + source inference: NumPyro models, the Gibbs kernel and its blocks, the pure core and batches, chain starts."""
