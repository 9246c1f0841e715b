"""Source priors: the VE diffusion SDE, analytic Gaussian priors, the score network, its training data and training."""
