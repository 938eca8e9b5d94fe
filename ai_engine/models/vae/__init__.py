"""Convolutional variational autoencoder (Baur et al. style baseline, seed 001)."""
