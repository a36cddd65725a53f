"""Training losses: adversarial (GAN) terms and the LPIPS perceptual loss."""

from .adversarial import adaptive_gan_weight, hinge_discriminator_loss, vanilla_generator_loss
from .perceptual import LPIPSLoss

__all__ = ["LPIPSLoss", "adaptive_gan_weight", "hinge_discriminator_loss", "vanilla_generator_loss"]
