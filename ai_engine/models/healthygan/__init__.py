"""HealthyGAN (Sun, Zhao, Adeli, MIDL 2022; seed 003 §2.4.5): one-way masked translation."""
