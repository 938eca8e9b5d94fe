"""Federated conditional GAN (seed 000): generator, discriminator, losses, local DP training.

This is a *generator* of synthetic radiographs, not an `AnomalyModel`: the anomaly model of
the seed (F-AD) is the registered ``conv_ae`` trained on this generator's output. The Flower
adapters that federate it live in ``training/federated/``.
"""
