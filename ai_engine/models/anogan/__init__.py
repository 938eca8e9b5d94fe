"""AnoGAN (Schlegl et al. 2017, seed 003 section 2.4.1): DCGAN + latent search at test time."""
