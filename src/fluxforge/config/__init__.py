"""Typed params for ``params.yaml``: one module per section, the cross-section checks, one YAML loader.

Every stage loads the *whole* file through :func:`load_params`, so a typo anywhere fails the first stage that
runs, before any work is done, with a message that names the file and the dotted key. Unknown keys are errors
(``extra="forbid"``): a silently ignored key is a silently ignored experiment. Each default is stated once, on
its field here; ``params.yaml`` states every key again for DVC, and tests/test_defaults.py lists (with the
reason) each key where it deliberately differs.

Where things are: :mod:`.base` (the strict base model, number types, :class:`ParamsError`), one module per
section (:mod:`.world`, :mod:`.data`, :mod:`.filters`, :mod:`.tokenizer`, :mod:`.model`, :mod:`.train`,
:mod:`.continual`, :mod:`.distill`, :mod:`.study`, :mod:`.stream` (with :mod:`.methods`: update methods and
budgets, shared by every stream), :mod:`.evaluate`, :mod:`.register`,
:mod:`.tracking`, :mod:`.mm`), :mod:`.params` (the whole file) and :mod:`.loader` (YAML, profiles as overlays, ``-S``).
"""

from fluxforge.config.base import DOMAINS, Fraction, NonNegFloat, NonNegInt, ParamsError, PosFloat, PosInt, Strict, builds
from fluxforge.config.continual import ContinualConfig, ContinualTask
from fluxforge.config.data import RAW_COLUMNS, ContractConfig, ContractsConfig, DataConfig, DedupConfig, RunnerConfig, Source
from fluxforge.config.distill import DistillConfig
from fluxforge.config.evaluate import EvalConfig
from fluxforge.config.filters import (
    AgeConfig,
    BoilerplateConfig,
    C4Config,
    FilterConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    PIIConfig,
    ToxicityConfig,
    URLBlocklistConfig,
)
from fluxforge.config.loader import (
    FileKind,
    dump_params,
    load_params,
    merge_overlay,
    parse_params,
    profile_path,
    read_params,
    read_yaml,
    set_dotted,
    validate,
)
from fluxforge.config.methods import (
    AdapterSettings,
    BudgetSettings,
    EWCSettings,
    GaLoreSettings,
    MergeSettings,
    SISettings,
    UpdateSettings,
)
from fluxforge.config.mm import (
    NO_REPLAY,
    BMMAEObjective,
    CLIPSettings,
    CLIPText,
    CLIPVision,
    CMAEObjective,
    MAEConfig,
    MAEModel,
    MAEObjective,
    MMConfig,
    MMCurate,
    MMDefects,
    MMEval,
    MMGate,
    MMRegister,
    MMStream,
    MMTrain,
    MMWorld,
    StreamMixture,
)
from fluxforge.config.model import ModelConfig
from fluxforge.config.params import Params
from fluxforge.config.register import GateConfig, RegisterConfig
from fluxforge.config.stream import (
    CMRPlanner,
    StabilityStrategy,
    StreamConfig,
    StreamError,
    StreamReplay,
    StreamTask,
    StreamTrainOverrides,
)
from fluxforge.config.study import StudyConfig
from fluxforge.config.tokenizer import TokenizerConfig
from fluxforge.config.tracking import TrackingConfig
from fluxforge.config.train import (
    AveragingSettings,
    CurriculumSettings,
    DeepSpeedSettings,
    GrowthSettings,
    InfiniteSchedule,
    MeCoSettings,
    Replay,
    TrainConfig,
    wsd_decay_steps,
)
from fluxforge.config.world import CyberWorld, DefectRates, GeneralWorld, WorldConfig

__all__ = [
    "builds",
    "BMMAEObjective", "CLIPSettings", "CLIPText", "CLIPVision", "CMAEObjective", "MAEConfig", "MAEModel", "MAEObjective",
    "MMConfig", "MMCurate", "MMDefects", "MMEval", "MMGate", "MMRegister", "MMStream", "MMTrain", "MMWorld", "NO_REPLAY", "StreamMixture",
    "DOMAINS", "RAW_COLUMNS", "AdapterSettings", "AgeConfig", "AveragingSettings", "BudgetSettings", "EWCSettings",
    "GaLoreSettings", "SISettings", "UpdateSettings", "BoilerplateConfig", "C4Config", "CMRPlanner",
    "ContinualConfig", "ContinualTask", "ContractConfig", "ContractsConfig", "CurriculumSettings", "CyberWorld",
    "DataConfig", "DedupConfig", "DeepSpeedSettings", "DefectRates", "DistillConfig", "EvalConfig", "FileKind",
    "FilterConfig", "FineWebConfig", "Fraction", "GateConfig", "GeneralWorld", "GopherQualityConfig",
    "GopherRepetitionConfig", "GrowthSettings", "InfiniteSchedule", "LanguageConfig", "MeCoSettings", "MergeSettings",
    "ModelConfig", "NonNegFloat", "NonNegInt", "PIIConfig", "Params", "ParamsError", "PosFloat", "PosInt",
    "RegisterConfig", "Replay", "RunnerConfig", "Source", "StabilityStrategy", "StreamConfig", "StreamError",
    "StreamReplay", "StreamTask", "StreamTrainOverrides", "Strict", "StudyConfig", "TokenizerConfig", "ToxicityConfig",
    "TrackingConfig", "TrainConfig", "URLBlocklistConfig", "WorldConfig", "dump_params", "load_params",
    "merge_overlay", "parse_params", "profile_path", "read_params", "read_yaml", "set_dotted", "validate",
    "wsd_decay_steps",
]
