"""Convolutional autoencoder (seed 001): reconstruction error as the anomaly map."""
