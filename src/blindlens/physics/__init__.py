"""Physics: pixel grids, PSFs, mass and light profiles, the lensing and linear operators (arcsec, image units)."""
