"""Denoising autoencoder with coarse noise (Kascenas et al. 2022): residual inside the brain."""
