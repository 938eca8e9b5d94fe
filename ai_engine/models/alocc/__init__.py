"""ALOCC (Sabokrou et al. 2018, seed 003 §2.4.3): reconstructor R + discriminator D."""
