"""SimSID (Xiang et al., TPAMI 2024): space-aware memory in-painting, discriminator score."""
