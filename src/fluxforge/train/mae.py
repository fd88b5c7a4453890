"""The masked-autoencoder family on HF ``ViTMAEForPreTraining`` (methods.md section 10).

* ``mae`` (He et al. 2022): one random mask, MSE on the masked patches (HF's own loss).
* ``cmae`` (Point-CMAE, Ren et al. 2024, on image patches): two independent masks through one shared encoder,
  two decoders each reconstructing the patches its mask hid, plus ``1 - cos`` between the two decoders' features
  of each token both masks hid (the paper's per-token diagonal; ``pairs: all`` is the released code's rows x
  all columns).
* ``bmmae`` (modality dropping, BM-MAE / MultiMAE): the image and its silhouette mask are two channel groups
  of one 4-channel patch; a sample with both loses a whole modality with probability ``drop`` (zeros in, so
  the encoder sees none of it) and the decoder reconstructs it everywhere, besides the masked patches of
  the modality it kept. Digits have no mask: for them the mask is always absent and never a target.

:func:`masked_patch_mse` is written from the paper's definition, independently of HF's code; a test holds
it equal to HF's loss under the same noise.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from fluxforge.config import MAEConfig, MAEModel
from fluxforge.train.loop import Objective
from fluxforge.train.sampler import Batch

MODALITY_CHANNELS = {"image": 3, "mask": 1}


def vitmae_config(cfg: MAEModel, mask_ratio: float, norm_pix_loss: bool, num_channels: int = 3) -> ViTMAEConfig:
    """The HF config; no dropout (tiny models, short runs)."""
    return ViTMAEConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=num_channels, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        decoder_hidden_size=cfg.decoder_hidden_size, decoder_num_hidden_layers=cfg.decoder_num_layers,
        decoder_num_attention_heads=cfg.decoder_num_heads, decoder_intermediate_size=cfg.decoder_intermediate_size,
        mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def new_vitmae(cfg: MAEModel, mask_ratio: float, norm_pix_loss: bool, num_channels: int = 3,
               seed: int | None = None) -> ViTMAEForPreTraining:
    """A freshly initialised model; the same ``seed`` (default ``cfg.init_seed``) gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed if seed is None else seed)
        return ViTMAEForPreTraining(vitmae_config(cfg, mask_ratio, norm_pix_loss, num_channels))


# ----------------------------------------------------------------------------- the loss, from the definition
def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, L, patch*patch*C)``, patches row-major, each patch's pixels row-major with
    channels innermost (the layout of ``ViTMAEForPreTraining.patchify``)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    n, length, _ = patches.shape
    side = int(round(length**0.5))
    x = patches.reshape(n, side, side, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, channels, side * patch, side * patch)


def normalise_patches(target: torch.Tensor) -> torch.Tensor:
    """Per-patch standardisation (unbiased variance, eps 1e-6): MAE's ``norm_pix_loss`` target."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1e-6) ** 0.5


def masked_patch_mse(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch: int,
                     norm_pix: bool) -> torch.Tensor:
    """Mean over a patch's values of the squared error, averaged over the patches ``mask`` (1 = hidden) marks."""
    target = patchify(images, patch)
    if norm_pix:
        target = normalise_patches(target)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def random_noise(batch: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """MAE's per-sample masking noise: the patches with the smallest noise stay visible."""
    return torch.rand(batch, length, device=device)


def mask_from_noise(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """The mask MAE's random masking derives from ``noise``: exactly ``L - int(L (1 - ratio))`` ones per row."""
    keep = int(noise.shape[1] * (1 - ratio))
    ranks = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    return (ranks >= keep).float()


# ----------------------------------------------------------------------------- double masking (Point-CMAE)
def co_mask_contrast(f1: torch.Tensor, f2: torch.Tensor, comask: torch.Tensor, pairs: str = "diagonal") -> torch.Tensor:
    """``1 - cos`` between the two branches' features ``(N, L, D)`` of the tokens ``comask`` (N, L) marks.

    ``diagonal``: token i of branch 1 against token i of branch 2 (the paper). ``all``: the released code, which
    averages ``1 - cos(f1_i, f2_j)`` over every column j for each co-masked row i. 0 when nothing is co-masked.
    """
    a, b = F.normalize(f1, dim=-1), F.normalize(f2, dim=-1)
    if pairs == "diagonal":
        per_token = 1 - (a * b).sum(dim=-1)
    elif pairs == "all":
        per_token = (1 - torch.bmm(a, b.transpose(1, 2))).mean(dim=-1)
    else:
        raise ValueError(f"pairs must be 'diagonal' or 'all', not {pairs!r}")
    return (per_token * comask).sum() / comask.sum().clamp(min=1)


@contextlib.contextmanager
def captured(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The outputs of ``module`` while the block runs (a forward hook, removed afterwards)."""
    got: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: got.append(out))
    try:
        yield got
    finally:
        handle.remove()


@dataclass
class CMAEOutput:
    loss: torch.Tensor
    reconstruction: tuple[torch.Tensor, torch.Tensor]
    contrast: torch.Tensor
    masks: tuple[torch.Tensor, torch.Tensor]


class DoubleMaskMAE(nn.Module):
    """One encoder (``mae.vit``), two decoders (``mae.decoder`` and ``decoder2``), two independent masks."""

    def __init__(self, mae: ViTMAEForPreTraining, contrast_weight: float, pairs: str = "diagonal", seed: int = 1) -> None:
        super().__init__()
        self.mae = mae
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.decoder2 = ViTMAEForPreTraining(copy.deepcopy(mae.config)).decoder  # its own initialisation
        self.contrast_weight, self.pairs = contrast_weight, pairs
        self.config = None  # not an HF model: the loop computes no MFU for it

    def branch(self, decoder: nn.Module, images: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.mae.vit(pixel_values=images, noise=noise)
        with captured(decoder.decoder_norm) as feats:
            logits = decoder(out.last_hidden_state, out.ids_restore).logits
        return logits, out.mask, feats[0][:, 1:]  # decoder features in patch order, without CLS

    def forward(self, images: torch.Tensor, noise1: torch.Tensor, noise2: torch.Tensor) -> CMAEOutput:
        p, norm = self.mae.config.patch_size, self.mae.config.norm_pix_loss
        logits1, mask1, f1 = self.branch(self.mae.decoder, images, noise1)
        logits2, mask2, f2 = self.branch(self.decoder2, images, noise2)
        rec = (masked_patch_mse(logits1, images, mask1, p, norm), masked_patch_mse(logits2, images, mask2, p, norm))
        contrast = co_mask_contrast(f1, f2, mask1 * mask2, self.pairs)
        return CMAEOutput(rec[0] + rec[1] + self.contrast_weight * contrast, rec, contrast, (mask1, mask2))


# ----------------------------------------------------------------------------- modality dropping (BM-MAE)
def modality_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, channels: int, norm_pix: bool) -> tuple:
    """(weighted sum, weight sum) of the per-patch MSE of one channel group; ``pred``/``target`` ``(N, L, p*p, C)``."""
    t = normalise_patches(target.flatten(2)) if norm_pix else target.flatten(2)
    per_patch = ((pred.flatten(2) - t) ** 2).mean(dim=-1)
    return (per_patch * weight).sum(), weight.sum()


def bimodal_loss(model: ViTMAEForPreTraining, image: torch.Tensor, silhouette: torch.Tensor, has_mask: torch.Tensor,
                 drop: float, noise: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One modality-dropping step: ``u`` (N,) uniform draws decide which samples lose the image (u < drop/2) or
    the mask (drop/2 <= u < drop); samples without a mask (``has_mask`` False) never show or predict one."""
    keep_image = ~(has_mask & (u < drop / 2))
    keep_mask = has_mask & ~((u >= drop / 2) & (u < drop))
    x = torch.cat([image * keep_image[:, None, None, None], silhouette * keep_mask[:, None, None, None]], dim=1)
    out = model.vit(pixel_values=x, noise=noise)
    pred = model.decoder(out.last_hidden_state, out.ids_restore).logits
    p, norm = model.config.patch_size, model.config.norm_pix_loss
    n, length = pred.shape[:2]
    pred = pred.reshape(n, length, p * p, 4)
    target = patchify(torch.cat([image, silhouette], dim=1), p).reshape(n, length, p * p, 4)
    hidden = out.mask
    w_image = torch.where(keep_image[:, None], hidden, torch.ones_like(hidden))
    w_mask = torch.where(keep_mask[:, None], hidden, torch.ones_like(hidden)) * has_mask[:, None]
    s1, n1 = modality_mse(pred[..., :3], target[..., :3], w_image, 3, norm)
    s2, n2 = modality_mse(pred[..., 3:], target[..., 3:], w_mask, 1, norm)
    return (s1 + s2) / (n1 + n2)


# ----------------------------------------------------------------------------- objectives for the loop
@dataclass(frozen=True)
class MAEData:
    """Training images (``(N, 3, S, S)`` in [-1, 1]) and, for ``bmmae``, their masks and which have one."""

    images: torch.Tensor
    masks: torch.Tensor | None = None
    has_mask: torch.Tensor | None = None


def build(objective: str, cfg: MAEConfig) -> nn.Module:
    """The trainable module of ``objective`` at the shared init (``cfg.model.init_seed``)."""
    settings = getattr(cfg, objective)
    if objective == "mae":
        return new_vitmae(cfg.model, settings.mask_ratio, settings.norm_pix_loss)
    if objective == "cmae":
        return DoubleMaskMAE(new_vitmae(cfg.model, settings.mask_ratio, settings.norm_pix_loss), settings.contrast_weight,
                             settings.pairs, seed=cfg.model.init_seed + 1)
    if objective == "bmmae":
        return new_vitmae(cfg.model, settings.mask_ratio, settings.norm_pix_loss, num_channels=4)
    raise ValueError(f"unknown MAE objective {objective!r}")


def encoder_model(module: nn.Module) -> ViTMAEForPreTraining:
    """The HF model a stage saves: the module itself, or the shared encoder + first decoder of ``cmae``."""
    return module.mae if isinstance(module, DoubleMaskMAE) else module


def objective_for(objective: str, cfg: MAEConfig, data: MAEData) -> Objective:
    """The loop's ``Objective(model, batch)``: ``batch.tokens[:, 0]`` indexes ``data``; noise comes from torch's RNG
    (saved in checkpoints, so a resumed run draws the same masks)."""
    drop = cfg.bmmae.drop

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        idx = batch.tokens[:, 0]
        x = data.images[idx]
        length = cfg.model.num_patches
        if objective == "mae":
            return model(pixel_values=x).loss
        if objective == "cmae":
            return model(x, random_noise(len(x), length), random_noise(len(x), length)).loss
        assert data.masks is not None and data.has_mask is not None, "bmmae needs the silhouette masks"
        return bimodal_loss(model, x, data.masks[idx], data.has_mask[idx], drop, random_noise(len(x), length),
                            torch.rand(len(x)))

    return loss


def heldout_loss(module: nn.Module, images: torch.Tensor, noise: torch.Tensor) -> float:
    """Masked-patch loss of the encoder + (first) decoder on fixed images (all the model's channels) and fixed
    noise, in eval mode: the number that must fall as the model trains."""
    model = encoder_model(module)
    was = model.training
    model.eval()
    with torch.no_grad():
        value = float(model(pixel_values=images, noise=noise).loss)
    model.train(was)
    return value
