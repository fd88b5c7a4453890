"""The MAE family (methods.md section 10): masking, the loss from its definition, double masking, modality dropping,
and frozen features that really see every patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fluxforge.config import MAEConfig, MAEModel, ParamsError, parse_params
from fluxforge.eval.vision import encoder_features, reconstruct, unmasked
from fluxforge.train import mae as M

TINY = MAEModel(image_size=8, patch_size=2, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                decoder_hidden_size=16, decoder_num_layers=1, decoder_num_heads=2, decoder_intermediate_size=32)
L = TINY.num_patches  # 16


def images(n: int = 4, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_exactly_L_minus_int_L_times_keep_patches_are_masked_per_sample():
    model = M.new_vitmae(TINY, 0.75, False)
    out = model(pixel_values=images(6))
    assert (out.mask.sum(dim=1) == L - int(L * 0.25)).all()
    noise = torch.rand(6, L)
    assert torch.equal(M.mask_from_noise(noise, 0.75), model(pixel_values=images(6), noise=noise).mask)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_hf_loss_equals_the_reimplementation_given_the_same_noise(norm_pix):
    model = M.new_vitmae(TINY, 0.75, norm_pix)
    x, noise = images(), torch.rand(4, L)
    out = model(pixel_values=x, noise=noise)
    mine = M.masked_patch_mse(out.logits, x, M.mask_from_noise(noise, 0.75), TINY.patch_size, norm_pix)
    assert torch.allclose(out.loss, mine, rtol=1e-6, atol=1e-7)
    other = M.masked_patch_mse(out.logits, x, M.mask_from_noise(torch.rand(4, L), 0.75), TINY.patch_size, norm_pix)
    assert not torch.allclose(out.loss, other)  # the comparison can tell masks apart


def test_the_loss_ignores_predictions_at_visible_patches():
    x, mask = images(), M.mask_from_noise(torch.rand(4, L), 0.75)
    pred = torch.randn(4, L, 12)
    changed = pred + (1 - mask).unsqueeze(-1) * 100.0
    assert torch.equal(M.masked_patch_mse(pred, x, mask, 2, False), M.masked_patch_mse(changed, x, mask, 2, False))
    hidden = pred + mask.unsqueeze(-1) * 0.1
    assert not torch.equal(M.masked_patch_mse(pred, x, mask, 2, False), M.masked_patch_mse(hidden, x, mask, 2, False))


def test_normalised_targets_have_zero_mean_and_unit_variance_per_patch():
    t = M.normalise_patches(M.patchify(images() * 3 + 1, 2))
    assert torch.allclose(t.mean(dim=-1), torch.zeros(4, L), atol=1e-5)
    assert torch.allclose(t.var(dim=-1), torch.ones(4, L), atol=1e-3)


def test_unpatchify_inverts_patchify_and_matches_hf_layout():
    x = images(channels=3)
    assert torch.equal(M.unpatchify(M.patchify(x, 2), 2, 3), x)
    assert torch.equal(M.patchify(x, 2), M.new_vitmae(TINY, 0.75, False).patchify(x))


def test_double_masks_are_independent():
    """Two masks at 0.6 hide the same token with probability 0.6 x 0.6 = 0.36."""
    n, length = 4000, 100  # 40 patches visible, 60 hidden: exactly 0.6
    m1, m2 = (M.mask_from_noise(M.random_noise(n, length), 0.6) for _ in range(2))
    overlap = (m1 * m2).mean().item()
    assert abs(overlap - m1.mean().item() * m2.mean().item()) < 0.005 and abs(overlap - 0.36) < 0.01


def test_the_contrast_is_zero_for_identical_features_and_blind_outside_the_co_mask():
    f = torch.randn(2, L, 8)
    comask = torch.zeros(2, L)
    comask[:, :5] = 1
    assert M.co_mask_contrast(f, f.clone(), comask).item() == pytest.approx(0.0, abs=1e-6)
    other = f.clone()
    other[:, 5:] = torch.randn(2, L - 5, 8)  # only tokens outside the co-mask change
    assert M.co_mask_contrast(f, other, comask).item() == pytest.approx(0.0, abs=1e-6)
    other[:, 0] = -f[:, 0]  # a co-masked token pointing the other way: 1 - cos = 2 for one of five tokens
    assert M.co_mask_contrast(f, other, comask).item() == pytest.approx(2 / 5, abs=1e-5)
    assert M.co_mask_contrast(f, f, torch.zeros(2, L)).item() == 0.0
    assert M.co_mask_contrast(f, f.clone(), comask, "all").item() > 0.1  # the code's rows x columns version differs


def test_cmae_trains_both_decoders_through_one_encoder():
    cfg = MAEConfig(model=TINY)
    module = M.build("cmae", cfg)
    out = module(images(), torch.rand(4, L), torch.rand(4, L))
    assert out.masks[0].sum(dim=1).eq(L - int(L * 0.4)).all() and not torch.equal(*out.masks)
    out.loss.backward()
    for part in (module.mae.vit, module.mae.decoder, module.decoder2):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert module.decoder2.decoder_pred.weight.data.ne(module.mae.decoder.decoder_pred.weight.data).any()


def test_modality_dropping_hides_a_whole_modality_and_reconstructs_it():
    cfg = MAEConfig(model=TINY)
    model = M.build("bmmae", cfg)
    seen = []
    model.vit.embeddings.patch_embeddings.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach()))
    x, sil = images(3), images(3, channels=1, seed=1)
    has = torch.tensor([True, True, False])
    u = torch.tensor([0.1, 0.3, 0.1])  # drop 0.5: sample 0 loses its image, sample 1 its mask, sample 2 has none
    noise = torch.rand(3, L)
    loss = M.bimodal_loss(model, x, sil, has, 0.5, noise, u)
    seen_x = seen[0]
    assert seen_x[0, :3].abs().sum() == 0 and seen_x[0, 3].abs().sum() > 0
    assert seen_x[1, 3].abs().sum() == 0 and seen_x[1, :3].abs().sum() > 0
    assert seen_x[2, 3].abs().sum() == 0 and seen_x[2, :3].abs().sum() > 0
    other = sil.clone()
    other[2] = 5.0  # sample 2 has no mask: it is neither input nor target
    assert M.bimodal_loss(model, x, other, has, 0.5, noise, u).item() == loss.item()
    other = x.clone()
    other[0] = -other[0]  # sample 0's image was dropped: not an input, but a target everywhere
    assert M.bimodal_loss(model, other, sil, has, 0.5, noise, u).item() != loss.item()
    assert len(seen) == 3 and torch.equal(seen[2], seen[0])  # ... and the encoder saw exactly the same input
    loss.backward()
    assert model.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_features_see_every_patch_and_restore_the_mask_ratio():
    """ViTMAEModel masks even in eval mode: without the fix two calls give different features."""
    model = M.new_vitmae(TINY, 0.75, False).eval()
    x = images(5)
    with torch.no_grad():
        raw = [model.vit(pixel_values=x).last_hidden_state for _ in range(2)]
    assert raw[0].shape[1] == 1 + int(L * 0.25) and not torch.equal(raw[0], raw[1])  # the pitfall itself
    a, b = encoder_features(model, x), encoder_features(model, x)
    assert np.array_equal(a, b) and a.shape == (5, 2 * TINY.hidden_size)
    assert model.config.mask_ratio == 0.75 and model.vit.embeddings.config.mask_ratio == 0.75
    with pytest.raises(RuntimeError), unmasked(model.vit):
        raise RuntimeError("boom")
    assert model.vit.embeddings.config.mask_ratio == 0.75  # restored on error too
    # ordered noise: the patch tokens stay in patch order (feature of patch 0 depends on patch 0's pixels)
    y = x.clone()
    y[:, :, :2, :2] += 1.0
    with unmasked(model.vit), torch.no_grad():
        from fluxforge.eval.vision import ordered_noise

        h1 = model.vit(pixel_values=x, noise=ordered_noise(5, L)).last_hidden_state
        h2 = model.vit(pixel_values=y, noise=ordered_noise(5, L)).last_hidden_state
    assert h1.shape[1] == 1 + L and (h1[:, 1] - h2[:, 1]).abs().sum() > (h1[:, -1] - h2[:, -1]).abs().sum()


def test_the_reconstruction_grid_pastes_predictions_into_hidden_patches_only():
    model = M.new_vitmae(TINY, 0.75, True)
    x, noise = images(2), torch.rand(2, L)
    r = reconstruct(model, x, noise)
    visible = (1 - M.mask_from_noise(noise, 0.75)).bool()
    orig, rec = M.patchify(torch.from_numpy(r.original), 2), M.patchify(torch.from_numpy(r.reconstructed), 2)
    assert torch.allclose(orig[visible], rec[visible].clamp(-1, 1)) and not torch.allclose(orig[~visible], rec[~visible])
    assert np.abs(M.patchify(torch.from_numpy(r.masked), 2)[~visible].numpy()).sum() == 0


def test_bad_shapes_and_mask_ratios_fail_at_start_naming_the_key(tiny_raw):
    tiny_raw["mm"]["mae"]["model"]["patch_size"] = 5
    with pytest.raises(ParamsError, match=r"mm\.mae\.model: .*image_size \(\d+\) is not a multiple of patch_size \(5\)"):
        parse_params(tiny_raw)
    tiny_raw["mm"]["mae"]["model"]["patch_size"] = 4
    tiny_raw["mm"]["mae"]["cmae"]["mask_ratio"] = 0.99
    with pytest.raises(ParamsError, match=r"mm\.mae\.cmae\.mask_ratio 0\.99 leaves no visible patch"):
        parse_params(tiny_raw)
    tiny_raw["mm"]["mae"]["cmae"]["mask_ratio"] = 1.0
    with pytest.raises(ParamsError, match=r"mm\.mae\.cmae\.mask_ratio: Input should be less than 1"):
        parse_params(tiny_raw)
    tiny_raw["mm"]["mae"]["cmae"]["mask_ratio"] = 0.6
    tiny_raw["mm"]["clip"]["vision"]["image_size"] = 30
    with pytest.raises(ParamsError, match=r"mm\.clip\.vision: .*not a multiple of patch_size"):
        parse_params(tiny_raw)


def test_a_nan_loss_stops_the_stage_naming_the_step(in_tmp):
    """A picture of NaNs (a corrupt input) makes the loss NaN: the run fails naming the stage and the step."""
    from fluxforge.config import MMTrain
    from fluxforge.train.image_job import ImageJob, IndexSampler, TrainingError, run_image_job

    cfg = MAEConfig(model=TINY, train=MMTrain(steps=4, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=4))
    x = images(8)
    x[5] = float("nan")
    module = M.build("mae", cfg)
    job = ImageJob("mae/mae", "mae@mae", module, module, IndexSampler(8, 8, L, 0, "nan"), cfg.train.train_config(L),
                   M.objective_for("mae", cfg, M.MAEData(x)))
    with pytest.raises(TrainingError, match=r"^mae@mae: mae/mae: loss became nan at step 0;"):
        run_image_job(job, None)
    assert not (in_tmp / "models" / "mae").exists()  # nothing half-trained is saved


def test_an_image_job_run_twice_saves_the_same_weights(in_tmp):
    """MAE draws its masks from torch's global RNG: the job seeds it from ``train.seed``, so two runs of the same stage
    (a `dvc repro` and a Prefect refresh) save the same model and DVC sees the same hash."""
    from fluxforge.config import MMTrain
    from fluxforge.train.image_job import ImageJob, IndexSampler, run_image_job

    cfg = MAEConfig(model=TINY, train=MMTrain(steps=3, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=3))
    weights = []
    for attempt in range(2):
        torch.manual_seed(100 + attempt)  # whatever the process drew before the stage
        module = M.build("mae", cfg)
        job = ImageJob(f"mae/run{attempt}", "mae@mae", module, module, IndexSampler(8, 4, L, 0, "det"),
                       cfg.train.train_config(L), M.objective_for("mae", cfg, M.MAEData(images(8))))
        run_image_job(job, None)
        weights.append({k: v.clone() for k, v in module.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
