"""Building blocks the model folders share; a model folder imports these, never a sibling model.

- `dcgan`: strided 4x4 down/up convolution stacks, the DCGAN encoders/discriminators and
  generators/decoders (AnoGAN, f-AnoGAN, ALAD, GANomaly, ALOCC).
- `autoencoder`: the convolutional autoencoder and VAE bodies (conv AE, VAE, Reversed AE).
- `wgan_gp`: the PatchGAN critic, the gradient penalty and the semi-supervised GAN trainer
  (Brainomaly, SAGAN, HealthyGAN).
- `translation`: the UNet body and zero-initialised heads of the translation GANs
  (Brainomaly, HealthyGAN).
- `reconstruction`: error maps and image-score rules of reconstruction models, and the
  `ReconstructionModel` adapter that turns a network returning a reconstruction into an
  `ai_engine.models.base.AnomalyModel`.
"""
