"""``mm``: the image and image-text branch (generated image world, curation, MAE family, CLIP, evaluation, registry).

The default sizes are the smallest at which issue 16's thresholds held (MAE and CMAE probes over random init,
CLIP zero-shot and R@5 over 5x chance; BENCHMARKS.md "Image branch"), each training stage under a minute and a
half on 2 CPU cores; ``profiles/tiny.yaml`` shrinks them for tests.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fluxforge.config.base import Fraction, NonNegFloat, NonNegInt, PosFloat, PosInt, Strict
from fluxforge.config.methods import (
    MERGE_SCHEDULES,
    METHODS,
    AdapterSettings,
    BudgetSettings,
    EWCSettings,
    GaLoreSettings,
    MergeSettings,
    SISettings,
    UpdateSettings,
    check_update,
)
from fluxforge.config.train import TrainConfig

MaskRatio = Annotated[float, Field(ge=0, lt=1)]
Objective = Literal["mae", "cmae", "bmmae"]


class MMDefects(Strict):
    """Share of clean world images that get a planted defective copy (labels in ``labels.parquet``)."""

    undecodable: Fraction = 0.01     # truncated PNG bytes
    wrong_mode: Fraction = 0.01      # saved as RGBA / L instead of RGB
    wrong_size: Fraction = 0.01      # 28x28 instead of 32x32
    empty_caption: Fraction = 0.01
    oov_caption: Fraction = 0.01     # a word outside the world's vocabulary
    long_caption: Fraction = 0.01    # longer than the CLIP text position limit
    near_dup_within: Fraction = 0.01  # a slightly perturbed copy of a train image, again in train
    near_dup_across: Fraction = 0.02  # ... in a held-out split (leakage)


class MMWorld(Strict):
    """The generated image world (fluxforge.world.images): colour x shape concepts over three time slices."""

    seed: int = 4321
    train_per_concept: PosInt = 60   # per concept and slice
    test_per_concept: PosInt = 10    # held-out images of each trained concept
    unseen_per_concept: PosInt = 16  # images of the held-out colour-shape combinations (never trained on)
    digits_test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.33  # sklearn digits held out for the probes
    defects: MMDefects = MMDefects()


class ImageFormat(Strict):
    mode: Literal["RGB", "L", "RGBA"]
    size: PosInt


class SourceFormats(Strict):
    """What one source table promises per modality; a row that decodes to another mode or size is rejected."""

    image: ImageFormat
    mask: ImageFormat | None = None  # the aligned silhouette (shapes); absent: the source has no masks

    def formats(self) -> dict[str, ImageFormat]:
        return {m: f for m, f in (("image", self.image), ("mask", self.mask)) if f is not None}


def _default_sources() -> dict[str, SourceFormats]:
    return {"shapes": SourceFormats(image=ImageFormat(mode="RGB", size=32), mask=ImageFormat(mode="L", size=32)),
            "digits": SourceFormats(image=ImageFormat(mode="L", size=16))}


class MMCurate(Strict):
    """The image-table contract and perceptual-hash dedup (fluxforge.data.image_contract, fluxforge.data.image_dedup)."""

    sources: dict[str, SourceFormats] = Field(default_factory=_default_sources)  # world/<name>.parquet each
    hash_size: PosInt = 8             # imagehash.phash: hash_size**2 bits
    max_distance: NonNegInt = 4       # pHash Hamming distance of a candidate pair
    max_pixel_diff: NonNegFloat = 2.0  # confirmation: mean |RGB difference| after the brightness offset (0-255)
    min_rows: PosInt = 1              # per source, after curation


class MAEModel(Strict):
    """HF ``ViTMAEConfig`` sizes (encoder and decoder); ``init_seed`` fixes the random init the probes compare against."""

    image_size: PosInt = 16  # the digits' own size; world pictures are scaled down to it
    patch_size: PosInt = 4
    hidden_size: PosInt = 64
    num_layers: PosInt = 3
    num_heads: PosInt = 4
    intermediate_size: PosInt = 128
    decoder_hidden_size: PosInt = 64
    decoder_num_layers: PosInt = 2  # one layer left the encoder doing reconstruction: its probe fell below random init
    decoder_num_heads: PosInt = 4
    decoder_intermediate_size: PosInt = 128
    init_seed: int = 0

    @model_validator(mode="after")
    def _shapes(self) -> MAEModel:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) is not a multiple of patch_size ({self.patch_size})")
        for width, heads in (("hidden_size", "num_heads"), ("decoder_hidden_size", "decoder_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"{width} ({getattr(self, width)}) is not a multiple of {heads} ({getattr(self, heads)})")
        return self

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class MMTrain(Strict):
    """One image-branch training run; :meth:`train_config` hands it to the shared loop (fluxforge.train.loop)."""

    steps: PosInt = 600
    batch_size: PosInt = 64
    lr: PosFloat = 1e-3
    min_lr_ratio: Fraction = 0.1
    warmup_steps: NonNegInt = 30
    weight_decay: float = 0.05
    grad_clip: PosFloat = 1.0
    seed: int = 0
    log_every: PosInt = 20
    checkpoint_every: PosInt = 200

    @model_validator(mode="after")
    def _warmup_fits(self) -> MMTrain:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self

    def train_config(self, tokens_per_example: int) -> TrainConfig:
        """The loop's config: cosine schedule on CPU, ``seq_len`` = tokens (patches) per example."""
        return TrainConfig(slices=["mm"], steps=self.steps, batch_size=self.batch_size, seq_len=tokens_per_example,
                           lr=self.lr, min_lr_ratio=self.min_lr_ratio, warmup_steps=self.warmup_steps,
                           weight_decay=self.weight_decay, grad_clip=self.grad_clip, seed=self.seed,
                           log_every=self.log_every, checkpoint_every=self.checkpoint_every, device="cpu")


class MAEObjective(Strict):
    """``mae``: He et al. 2022, masked-patch MSE (methods.md section 10)."""

    mask_ratio: MaskRatio = 0.75
    norm_pix_loss: bool = True  # the paper's target; without it the digits probe fell below random init
    steps: PosInt | None = None  # None: mm.mae.train.steps


class CMAEObjective(Strict):
    """``cmae``: Point-CMAE double masking on image patches (Ren et al. 2024): two independent masks, a shared
    encoder, two decoders, reconstruction on both plus ``1 - cos`` of the two decoders' features on co-masked tokens."""

    mask_ratio: MaskRatio = 0.6
    norm_pix_loss: bool = True
    contrast_weight: NonNegFloat = 0.1  # pixel MSE is ~0.1 here; Point-CMAE's 1000 x Chamfer-L2 plays the same role
    pairs: Literal["diagonal", "all"] = "diagonal"  # the paper's per-token term | the released code's rows x all columns
    # equal compute, not equal steps: a step runs the encoder twice and two decoders; 600 of them took as long as
    # 1000 `mae` steps (BENCHMARKS.md "Image branch")
    steps: PosInt | None = 600


class BMMAEObjective(Strict):
    """``bmmae``: modality dropping (BM-MAE / MultiMAE): image and silhouette mask as two channel groups; a sample
    that has both loses one whole modality with probability ``drop`` (half image, half mask) and reconstructs it."""

    mask_ratio: MaskRatio = 0.75
    norm_pix_loss: bool = True
    drop: Fraction = 0.5
    steps: PosInt | None = None  # None: mm.mae.train.steps


class MAEConfig(Strict):
    objectives: list[Objective] = Field(default_factory=lambda: ["mae", "cmae"], min_length=1)
    slices: list[PosInt] = Field(default_factory=lambda: [1], min_length=1)  # world slices whose train images it sees
    digits: bool = True  # also the digits' train split (unlabelled): the probes' real images
    heldout_batch: PosInt = 64  # fixed held-out images and noise for the before/after masked-patch loss
    heldout_every: NonNegInt = 100  # that loss every N steps too (0: before and after only)
    model: MAEModel = MAEModel()
    # 2e-3 first wrecked the random init's features (probe 0.78 -> 0.56); 5e-4 improves on them (BENCHMARKS.md)
    train: MMTrain = MMTrain(steps=1000, lr=5e-4)
    mae: MAEObjective = MAEObjective()
    cmae: CMAEObjective = CMAEObjective()
    bmmae: BMMAEObjective = BMMAEObjective()

    def train_for(self, objective: str) -> MMTrain:
        """The training settings of ``objective``: ``train`` with the objective's own ``steps`` when it sets them."""
        steps = getattr(self, objective).steps
        return self.train if steps is None else self.train.model_copy(update={"steps": steps})

    @model_validator(mode="after")
    def _visible_patches(self) -> MAEConfig:
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"mm.mae.objectives lists an objective twice: {self.objectives}")
        for name in ("mae", "cmae", "bmmae"):
            steps = getattr(self, name).steps
            if steps is not None and steps <= self.train.warmup_steps:
                raise ValueError(f"mm.mae.{name}.steps ({steps}) must be above mm.mae.train.warmup_steps ({self.train.warmup_steps})")
        n = self.model.num_patches
        for name in ("mae", "cmae", "bmmae"):
            ratio = getattr(self, name).mask_ratio
            if int(n * (1 - ratio)) < 1:
                raise ValueError(f"mm.mae.{name}.mask_ratio {ratio} leaves no visible patch of the {n} patches "
                                 f"(int({n} x (1 - {ratio})) = 0); lower it below {1 - 1 / n:.4f}")
        return self


class CLIPVision(Strict):
    image_size: PosInt = 32
    patch_size: PosInt = 8
    hidden_size: PosInt = 64
    num_layers: PosInt = 2
    num_heads: PosInt = 4
    intermediate_size: PosInt = 128

    @model_validator(mode="after")
    def _shapes(self) -> CLIPVision:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) is not a multiple of patch_size ({self.patch_size})")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not a multiple of num_heads ({self.num_heads})")
        return self


class CLIPText(Strict):
    hidden_size: PosInt = 64
    num_layers: PosInt = 2
    num_heads: PosInt = 4
    intermediate_size: PosInt = 128
    max_position_embeddings: Annotated[int, Field(ge=3)] = 24  # BOS + caption + EOS; longer captions are rejected

    @model_validator(mode="after")
    def _shapes(self) -> CLIPText:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not a multiple of num_heads ({self.num_heads})")
        return self


class CLIPSettings(Strict):
    """``clip_pretrain``: HF ``CLIPModel(CLIPConfig(...))`` on the pairs of ``slices``, class-CLIP multi-positive InfoNCE."""

    slices: list[PosInt] = Field(default_factory=lambda: [1], min_length=1)
    vision: CLIPVision = CLIPVision()
    text: CLIPText = CLIPText()
    projection_dim: PosInt = 64
    logit_scale_init: float = 2.6592  # log(1/0.07), CLIP's
    init_seed: int = 0
    train: MMTrain = MMTrain(steps=400)  # zero-shot accuracy was the same after 400 steps as after 600 (11.6x chance)


NO_REPLAY = "no_replay"  # a run of mm.stream.methods: full finetuning with the update share only (no replay, no buffer)


class StreamMixture(Strict):
    """Shares of each training batch of an image-text stream task (FoMo-in-Flux's mixture): pairs of the pretraining
    data (``replay``), of the task (``update``) and of the reservoir buffer of earlier tasks (``buffer``). While the
    buffer is empty (the first task) its share goes to the update."""

    replay: Fraction = 0.33
    update: Fraction = 0.34
    buffer: Fraction = 0.33

    @model_validator(mode="after")
    def _sums_to_one(self) -> StreamMixture:
        total = self.replay + self.update + self.buffer
        if abs(total - 1) > 1e-6:
            raise ValueError(f"mm.stream.mixture: replay + update + buffer = {self.replay:g} + {self.update:g} + "
                             f"{self.buffer:g} = {total:g}; the shares of a batch must sum to 1")
        if self.update == 0:
            raise ValueError("mm.stream.mixture.update is 0: a task would never see its own pairs")
        return self


def _attention_projections() -> AdapterSettings:
    return AdapterSettings(target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])


class MMStream(Strict):
    """``mm_stream``: FoMo-in-Flux over the later world slices (fluxforge.continual.clip_stream).

    The stream's items are FoMo's ``SET+++concept`` strings (``shapes-s2+++red star``), ordered by ``ordering`` or
    read from ``order_file`` (FoMo's JSON list), cut into ``num_tasks`` chunks. Every run in ``methods`` starts from
    ``models/clip`` and trains the same tasks on the same budget (``budget.kind``: equal memory-adjusted FLOPs by
    default, full finetuning taking ``train.steps`` per task); ``deploy`` names the run saved as ``models/mm_stream``
    (what ``mm_eval`` scores and ``mm_register`` registers). The family keys (``adapter``, ``merge``...) are the
    language stream's (fluxforge.config.methods).
    """

    slices: list[PosInt] = Field(default_factory=lambda: [2, 3], min_length=1)
    num_tasks: PosInt = 3
    ordering: Literal["given", "random", "reverse"] = "given"
    order_file: str | None = None  # FoMo's ordering JSON: a list of "SET+++concept"; overrides ordering
    seed: int = 0  # the random ordering and the reservoir
    mixture: StreamMixture = StreamMixture()
    buffer_size: PosInt = 200  # reservoir capacity, in pairs
    methods: list[str] = Field(default_factory=lambda: ["finetune", NO_REPLAY, "lora", "ema_merge"], min_length=1)
    deploy: str = "finetune"
    train: MMTrain = MMTrain(steps=100, lr=5e-4, warmup_steps=10, log_every=10, checkpoint_every=50)
    adapter: AdapterSettings = Field(default_factory=_attention_projections)  # LoRA on the attention projections
    galore: GaLoreSettings = GaLoreSettings()
    ewc: EWCSettings = EWCSettings()
    si: SISettings = SISettings()
    merge: MergeSettings = MergeSettings()
    budget: BudgetSettings = BudgetSettings(kind="maf")

    def settings_for(self, run: str) -> UpdateSettings:
        """The update settings of one run of ``methods`` (``no_replay`` is full finetuning)."""
        return UpdateSettings(method="finetune" if run == NO_REPLAY else run, adapter=self.adapter, galore=self.galore,
                              ewc=self.ewc, si=self.si, merge=self.merge, budget=self.budget)

    @model_validator(mode="after")
    def _runs(self) -> MMStream:
        known = (*METHODS, NO_REPLAY)
        for i, run in enumerate(self.methods):
            if run not in known:
                raise ValueError(f"mm.stream.methods[{i}]: unknown method {run!r}; choose from {', '.join(known)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"mm.stream.methods lists a method twice: {self.methods}")
        if self.deploy not in self.methods:
            raise ValueError(f"mm.stream.deploy: {self.deploy!r} is not one of mm.stream.methods {self.methods}")
        if len(set(self.slices)) != len(self.slices):
            raise ValueError(f"mm.stream.slices lists a slice twice: {self.slices}")
        for run in self.methods:
            if run in MERGE_SCHEDULES:
                check_update(self.settings_for(run), "cosine", "mm.stream")
        return self


class MMEval(Strict):
    """``mm_eval``: linear probes on frozen features, CLIP zero-shot and retrieval."""

    batch_size: PosInt = 256
    probe_c: PosFloat = 1.0  # inverse L2 strength of the logistic regression (scikit-learn's C)
    probe_max_iter: PosInt = 2000
    grid_images: PosInt = 6  # held-out images in the MAE reconstruction grid


class MMGate(Strict):
    """Promotion of a ``fluxforge-clip`` version: every rule must hold."""

    min_zero_shot_over_chance: NonNegFloat = 5.0  # held-out zero-shot accuracy / chance
    min_recall5_over_chance: NonNegFloat = 5.0    # held-out image->text R@5 / chance
    must_beat_champion: bool = True              # held-out zero-shot accuracy above the champion's (same eval set) ...
    champion_margin: NonNegFloat = 0.01           # ... by at least this much: a tie keeps the champion


class MMRegister(Strict):
    model_name: str = "fluxforge-clip"
    gate: MMGate = MMGate()


class MMConfig(Strict):
    world: MMWorld = MMWorld()
    curate: MMCurate = MMCurate()
    mae: MAEConfig = MAEConfig()
    clip: CLIPSettings = CLIPSettings()
    stream: MMStream = MMStream()
    eval: MMEval = MMEval()
    registry: MMRegister = Field(default=MMRegister(), alias="register")  # ``register`` is a pydantic name

    @model_validator(mode="after")
    def _stream_after_clip(self) -> MMConfig:
        overlap = sorted(set(self.stream.slices) & set(self.clip.slices))
        if overlap:
            raise ValueError(f"mm.stream.slices {self.stream.slices} repeat slice(s) {overlap} of mm.clip.slices "
                             f"{self.clip.slices}: a stream updates the pretrained CLIP on later slices")
        return self
