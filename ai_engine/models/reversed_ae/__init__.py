"""Reversed Autoencoder (Bercea et al. 2024, seed 002): introspective VAE, pseudo-healthy map."""
