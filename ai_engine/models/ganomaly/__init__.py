"""GANomaly (Akcay et al. 2018, seed 003 §2.4.4): encoder-decoder-encoder GAN, latent score."""
