"""f-AnoGAN (Schlegl et al. 2019): WGAN-GP, then an izi_f encoder against the frozen GAN."""
