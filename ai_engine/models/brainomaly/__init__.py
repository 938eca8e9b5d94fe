"""Brainomaly (Siddiquee et al., WACV 2024; seed 003 §2.4.6): additive-map GAN, semi-supervised."""
