"""SAGAN (Zhang et al. 2024; seed 003 §2.4.7) and its chapter-3 variants, semi-supervised."""
