"""Results: ArviZ InferenceData, run diagnostics, figures, posterior products, lenstronomy export."""
