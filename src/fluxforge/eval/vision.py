"""Frozen features and reconstructions of ViT-MAE encoders.

``ViTMAEModel`` masks patches in every mode, eval included: a feature extractor that just calls it sees a
random quarter of the image, differently on every call. :func:`unmasked` sets the encoder's mask ratio to 0
for the call (restored afterwards, also on error), and the noise passed is ordered (0, 1, ..., L-1) so the
tokens keep their patch order. Features are the final CLS token concatenated with the mean of the patch
tokens (CLS ⊕ mean).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import ViTMAEForPreTraining, ViTMAEModel


@contextlib.contextmanager
def unmasked(encoder: ViTMAEModel) -> Iterator[None]:
    """The encoder sees every patch inside the block; its mask ratio is restored afterwards."""
    config = encoder.embeddings.config  # what random_masking reads
    ratio = config.mask_ratio
    config.mask_ratio = 0.0
    try:
        yield
    finally:
        config.mask_ratio = ratio


def ordered_noise(batch: int, length: int) -> torch.Tensor:
    """Noise whose argsort is the identity: with nothing masked, tokens stay in patch order."""
    return torch.arange(length, dtype=torch.float32).expand(batch, length).contiguous()


def with_channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB pixels for a model with more input channels: the extra modalities are absent (zeros)."""
    if pixels.shape[1] == channels:
        return pixels
    pad = torch.zeros(len(pixels), channels - pixels.shape[1], *pixels.shape[2:], dtype=pixels.dtype)
    return torch.cat([pixels, pad], dim=1)


def encoder_features(model: ViTMAEForPreTraining | ViTMAEModel, pixels: np.ndarray | torch.Tensor,
                     batch_size: int = 256) -> np.ndarray:
    """``(N, 2 * hidden)`` CLS ⊕ mean-pooled patch features of the final layer, every patch visible, in eval mode."""
    encoder = model.vit if isinstance(model, ViTMAEForPreTraining) else model
    x = torch.as_tensor(pixels)
    was = encoder.training
    encoder.eval()
    out = []
    with unmasked(encoder), torch.no_grad():
        for i in range(0, len(x), batch_size):
            chunk = with_channels(x[i : i + batch_size], encoder.config.num_channels)
            length = (encoder.config.image_size // encoder.config.patch_size) ** 2
            hidden = encoder(pixel_values=chunk, noise=ordered_noise(len(chunk), length)).last_hidden_state
            out.append(torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=1))
    encoder.train(was)
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class Reconstruction:
    """Pixels in [-1, 1], ``(N, C, S, S)``: the input, what the encoder saw (hidden patches grey), the output."""

    original: np.ndarray
    masked: np.ndarray
    reconstructed: np.ndarray
    mask: np.ndarray  # (N, L), 1 = hidden


def reconstruct(model: ViTMAEForPreTraining, pixels: np.ndarray | torch.Tensor, noise: torch.Tensor) -> Reconstruction:
    """MAE's figure: each picture, its visible patches, and the decoder's prediction pasted over the hidden ones.

    With ``norm_pix_loss`` the decoder predicts per-patch standardised pixels; they are mapped back with the
    true patch's mean and variance, as the MAE demo does.
    """
    x = with_channels(torch.as_tensor(pixels), model.config.num_channels)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=x, noise=noise)
        pred = out.logits
        if model.config.norm_pix_loss:
            target = model.patchify(x)
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        hidden = out.mask.unsqueeze(-1)
        patches = model.patchify(x)
        masked = model.unpatchify(patches * (1 - hidden))
        pasted = model.unpatchify(patches * (1 - hidden) + pred * hidden)
    model.train(was)
    return Reconstruction(x.numpy(), masked.numpy(), pasted.clamp(-1, 1).numpy(), out.mask.numpy())
