"""The image branch's training stages as functions: ``mae@<objective>`` and ``clip_pretrain`` (data in, model out).

MAE pretraining sees the train split of the world slices ``mm.mae.slices`` and, unlabelled, the digits' train
split: the probes are scored on held-out digits, so the encoder should have seen digit-like pictures (never
their labels). The held-out loss is measured on the world's test images of those slices with one fixed noise
draw, before training and every ``heldout_every`` steps. CLIP trains on the image-caption pairs of
``mm.clip.slices`` (train split) with a tokenizer built from the world's vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.captions import caption_tokenizer, encode_captions, read_vocabulary
from fluxforge.data.images import load_image_set, masks_for
from fluxforge.train.clip import ClipData, caption_keys, clamp_temperature, clip_objective, new_clip
from fluxforge.train.image_job import ImageJob, IndexSampler, Tracker, fingerprint, run_image_job
from fluxforge.train.mae import MAEData, build, encoder_model, heldout_loss, objective_for

HELDOUT_SEED = 12345  # the fixed held-out images and noise


def mae_training_data(params: Params, objective: str, curated: Path = P.MM_CURATED) -> MAEData:
    cfg = params.mm.mae
    size = cfg.model.image_size
    world = load_image_set(curated / "shapes.parquet", size, slices=cfg.slices, splits=["train"])
    images = [world.pixels]
    if cfg.digits:
        images.append(load_image_set(curated / "digits.parquet", size, splits=["train"]).pixels)
    x = torch.from_numpy(np.concatenate(images))
    if objective != "bmmae":
        return MAEData(x)
    masks, have = masks_for(curated / "shapes.parquet", world.ids, size)
    pad = len(x) - len(world)
    masks = np.concatenate([masks, np.zeros((pad, *masks.shape[1:]), dtype=np.float32)])
    have = np.concatenate([have, np.zeros(pad, dtype=bool)])
    return MAEData(x, torch.from_numpy(masks), torch.from_numpy(have))


def mae_heldout(params: Params, objective: str, curated: Path = P.MM_CURATED) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed held-out images (with their masks for ``bmmae``) and fixed noise: the before/after loss's batch."""
    cfg = params.mm.mae
    test = load_image_set(curated / "shapes.parquet", cfg.model.image_size, slices=cfg.slices, splits=["test"])
    rng = np.random.default_rng(HELDOUT_SEED)
    pick = np.sort(rng.choice(len(test), size=min(cfg.heldout_batch, len(test)), replace=False))
    x = torch.from_numpy(test.pixels[pick])
    if objective == "bmmae":
        masks, _ = masks_for(curated / "shapes.parquet", [test.ids[i] for i in pick], cfg.model.image_size)
        x = torch.cat([x, torch.from_numpy(masks)], dim=1)
    gen = torch.Generator().manual_seed(HELDOUT_SEED)
    return x, torch.rand(len(x), cfg.model.num_patches, generator=gen)


def pretrain_mae(params: Params, objective: str, tracker: Tracker | None) -> dict:
    """Train ``models/mae/<objective>``; its info and metrics hold the held-out masked-patch loss (fixed images, fixed
    noise) before and after training and its relative drop."""
    cfg = params.mm.mae
    data = mae_training_data(params, objective)
    heldout, noise = mae_heldout(params, objective)
    module = build(objective, cfg)
    tcfg = cfg.train_for(objective).train_config(cfg.model.num_patches)
    sampler = IndexSampler(len(data.images), tcfg.batch_size, tcfg.seq_len, tcfg.seed, fingerprint(data.images))
    before = heldout_loss(module, heldout, noise)
    job = ImageJob(f"mae/{objective}", f"mae@{objective}", module, encoder_model(module), sampler, tcfg,
                   objective_for(objective, cfg, data))

    def finish(trained: torch.nn.Module) -> dict:
        after = heldout_loss(trained, heldout, noise)
        return {"heldout_loss_before": before, "heldout_loss_after": after, "heldout_drop": 1 - after / before}

    return run_image_job(job, tracker, probe=lambda m: {"heldout_loss": heldout_loss(m, heldout, noise)},
                         probe_every=cfg.heldout_every or tcfg.steps,
                         info={"objective": objective, "examples": len(data.images)}, finish=finish)


def clip_pairs(params: Params, tok, curated: Path = P.MM_CURATED) -> ClipData:  # noqa: ANN001 - a tokenizer
    cfg = params.mm.clip
    pairs = load_image_set(curated / "shapes.parquet", cfg.vision.image_size, slices=cfg.slices, splits=["train"])
    ids, attention = encode_captions(tok, pairs.captions)
    return ClipData(torch.from_numpy(pairs.pixels), torch.from_numpy(ids), torch.from_numpy(attention),
                    caption_keys(pairs.captions))


def pretrain_clip(params: Params, tracker: Tracker | None) -> dict:
    """Train ``models/clip`` (weights + the caption tokenizer) on the pairs of ``mm.clip.slices``."""
    cfg = params.mm.clip
    tok = caption_tokenizer(read_vocabulary(P.MM_WORLD / "vocab.json"), cfg.text.max_position_embeddings)
    data = clip_pairs(params, tok)
    model = new_clip(cfg, tok)
    tcfg = cfg.train.train_config((cfg.vision.image_size // cfg.vision.patch_size) ** 2)
    sampler = IndexSampler(len(data.keys), tcfg.batch_size, tcfg.seq_len, tcfg.seed, fingerprint(data.pixels, data.input_ids))
    job = ImageJob("clip", "clip_pretrain", model, model, sampler, tcfg, clip_objective(data), tok)
    return run_image_job(job, tracker, on_step=clamp_temperature,
                         info={"pairs": len(data.keys), "distinct_captions": int(data.keys.max()) + 1,
                               "slices": list(cfg.slices)})
