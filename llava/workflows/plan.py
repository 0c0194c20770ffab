"""The three-stage workflow's plan types: stage scripts and what they make, the stage and workflow settings,
one planned stage run (:class:`StageStep`) and the runner that executes it. The modules that plan, record,
evaluate and summarise a workflow all import them from here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = MappingProxyType({1: "general_alignment", 2: "domain_alignment", 3: "instruction_tuning"})
STAGE_VARS = ("MAX_STEPS", "EPOCHS", "LR", "BATCH_SIZE", "GRAD_ACCUM", "SAVE_STEPS", "MODEL_MAX_LENGTH",
              "DS_CONFIG", "MM_PROJECTOR_LR", "LORA_R", "LORA_ALPHA", "NUM_GPUS", "WARMUP_RATIO", "SEED")
# stage-script variables that change what a stage trains; recorded (when set) with every stage
TRAINING_VARS = ("VISION_TOWER", "PROJECTOR_TYPE", "SELECT_LAYER", "MODEL_MAX_LENGTH", "EPOCHS", "MAX_STEPS",
                 "WARMUP_RATIO", "WEIGHT_DECAY", "LR_SCHEDULER", "PACKING", "SEED", "LR", "BATCH_SIZE",
                 "GRAD_ACCUM", "DS_CONFIG", "MM_PROJECTOR_LR", "LORA_R", "LORA_ALPHA", "NUM_GPUS", "NUM_NODES",
                 "DEVICE", "NORM_STYLE", "MULTILAYER_SELECT", "MULTILAYER_POST_NORM", "PRETRAIN_DATA_ROOT",
                 "FINETUNE_DATA_ROOT")
DEFAULT_EVAL_STEPS = "100"  # as scripts/v1_5/_common.sh


@dataclass(frozen=True)
class ScriptKind:
    """How a stage script starts and what it leaves: ``start`` is ``flag`` (optional projector via
    ``--pretrain_mm_mlp_adapter``), ``env`` (projector via ``PRETRAIN_MM_MLP_ADAPTER``, required) or
    ``model`` (a finished LLaVA model as ``MODEL_NAME``); ``makes`` is ``projector``, ``model`` or ``lora``."""

    start: str
    makes: str


SCRIPT_KINDS = MappingProxyType({
    "pretrain.sh": ScriptKind("flag", "projector"),
    "multiNormpretrain.sh": ScriptKind("flag", "projector"),
    "finetune.sh": ScriptKind("env", "model"),
    "multiNormfinetune.sh": ScriptKind("env", "model"),
    "finetune_lora.sh": ScriptKind("env", "lora"),
    "finetune_task.sh": ScriptKind("model", "model"),
    "finetune_task_lora.sh": ScriptKind("model", "lora"),
})
DEFAULT_SCRIPTS = MappingProxyType({1: "pretrain.sh", 2: "pretrain.sh", 3: "finetune.sh"})

Runner = Callable[[list[str], Mapping[str, str], Path], int]


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation after a stage: questions/annotations in upstream's eval format."""

    questions: str
    answers: str
    image_folder: str
    batch_size: int = 8
    max_new_tokens: int = 16
    conv_mode: str | None = None


@dataclass(frozen=True)
class StageConfig:
    """One stage's script, data, validation data and stage-only settings."""

    number: int
    script: str
    data_path: str
    image_folder: str
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    eval_data: str | None = None
    eval_images: str | None = None
    eval_steps: str | None = None


@dataclass(frozen=True)
class WorkflowConfig:
    """Everything the plan depends on. ``after``: stages run elsewhere that ``INIT_PROJECTOR``/``INIT_MODEL``
    come from (part of the folder names; k-fold's shared stage 1); ``inherited_env``: the :data:`TRAINING_VARS`
    set in the caller's environment."""

    stages: tuple[int, ...]
    output_root: str
    stage_configs: tuple[StageConfig, ...]
    base_model: str
    addon_args: tuple[str, ...] = ()
    init_projector: str | None = None
    init_model: str | None = None
    eval: EvalConfig | None = None
    eval_stages: tuple[int, ...] = ()
    device: str = "gpu"
    force: bool = False
    force_all: bool = False
    after: tuple[int, ...] = ()
    inherited_env: Mapping[str, str] = field(default_factory=dict)

    def stage(self, number: int) -> StageConfig:
        """The config of stage ``number``."""
        for s in self.stage_configs:
            if s.number == number:
                return s
        raise KeyError(f"no configuration for stage {number}")

    @property
    def chain(self) -> str:
        """The chain's label, e.g. ``1-2-3``."""
        return "-".join(map(str, (*self.after, *self.stages)))


@dataclass(frozen=True)
class StageStep:
    """One planned stage run: the command, the environment it adds, its folders and what it starts from;
    ``chain`` is the label of the stages that trained its model (``1-2`` for stage 2 after stage 1)."""

    stage: int
    name: str
    script: str
    kind: ScriptKind
    env: dict[str, str]
    args: list[str]
    stage_dir: str
    output_dir: str
    init_from: str | None
    eval_base: str | None
    evaluate: bool
    chain: str = ""

    @property
    def command(self) -> list[str]:
        """argv of the stage run."""
        return ["bash", self.script, *self.args]

    @property
    def projector(self) -> str:
        """Where the projector this stage writes will be (projector stages)."""
        return str(Path(self.output_dir) / "mm_projector.bin")
