"""ALAD (Zenati et al. 2018, seed 003 section 2.4.2): BiGAN with cycle-consistency critics."""
