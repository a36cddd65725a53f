"""GAN losses and the adaptive generator/GAN loss balancing weight."""

import torch
import torch.nn.functional as F

__all__ = ["adaptive_gan_weight", "hinge_discriminator_loss", "vanilla_generator_loss"]


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator, official RAE scale: ``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss: ``-mean(logits_fake)``."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    gan_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_d_weight: float = 1e4,
) -> torch.Tensor:
    """Balance the GAN loss against the reconstruction loss at the decoder's last layer.

    Returns ``||d rec / d W|| / (||d gan / d W|| + 1e-6)`` clamped to ``[0, max_d_weight]``, as a detached
    0-dim tensor. Uses ``torch.autograd.grad`` with ``retain_graph=True`` (``.grad`` is never touched), so the
    graph remains usable for the final backward and it is safe under DDP.
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    (gan_grad,) = torch.autograd.grad(gan_loss, last_layer_weight, retain_graph=True)
    d_weight = torch.linalg.vector_norm(rec_grad) / (torch.linalg.vector_norm(gan_grad) + 1e-6)
    return d_weight.clamp(0.0, max_d_weight).detach()
