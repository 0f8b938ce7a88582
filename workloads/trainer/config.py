"""One typed config tree for the trainer, loaded with precedence CLI > TOML > defaults.

`load_config("tiny", ["--training.max_steps=5"])` reads `configs/tiny.toml` (or a path to a .toml file),
applies `--section.key=value` overrides (values parsed as TOML, else taken as strings) and validates the
result. Unknown keys are rejected with a "did you mean" naming the file (or the command line) and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vocab.explain import did_you_mean

from .model.args import PRESETS, ModelArgs, check_shape, get_preset

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class JobConfig(_Section):
    """[job]: run identity and seed."""

    name: str = "apertus"
    """Run name; also the Slurm job name used by the launch template."""
    run_dir: str = "runs/apertus"
    """Directory holding this run's checkpoints, metrics and resolved config."""
    seed: int = 1234
    """Seed for weight init, data order and every RNG; resume restores RNG states exactly."""


class ModelConfig(_Section):
    """[model]: a shape preset and optional overrides of it."""

    preset: Literal[tuple(PRESETS)] = "tiny"  # type: ignore[valid-type]
    """Model shape preset: tiny, 125m, 1b, 8b or 70b (see model/args.py)."""
    vocab_size: int | None = None
    """Override the preset's vocabulary size (must cover the tokenizer's ids)."""
    dim: int | None = None
    """Override the hidden size."""
    n_layers: int | None = None
    """Override the number of transformer blocks."""
    n_heads: int | None = None
    """Override the number of attention heads."""
    n_kv_heads: int | None = None
    """Override the number of key/value heads (GQA groups)."""
    rope_theta: float | None = None
    """Override the RoPE base period."""


class DataConfig(_Section):
    """[data]: datasets, blend, Goldfish loss; read by `loader.build_loader` and `preflight.check_data`."""

    paths: list[str] = []
    """Megatron dataset prefixes (PREFIX.bin/.idx). Empty: tokenize the bundled sample into the run dir."""
    weights: list[float] | None = None
    """Blend weights, one per path; None means proportional to size."""
    cache_dir: str | None = None
    """Where sample/shuffle indices are cached; None: <run_dir>/data_cache."""
    goldfish: bool = False
    """Apply the Goldfish loss (drop ~1/k of the labels, chosen by a hash of the h preceding tokens)."""
    goldfish_k: int = Field(50, ge=2)
    """Goldfish k: about 1/k of the labels are dropped."""
    goldfish_h: int = Field(50, ge=1)
    """Goldfish h: width of the hashed context window."""


class TrainingConfig(_Section):
    """[training]: batch, steps, precision, device; the batch shape also sizes the loader's dataset."""

    seq_len: int = Field(2048, ge=8)
    """Tokens per sample (the model sees seq_len inputs and seq_len labels)."""
    micro_batch_size: int = Field(1, ge=1)
    """Samples per device per forward/backward."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches accumulated per optimizer step; global batch = micro × accum × world size."""
    max_steps: int = Field(1000, ge=1)
    """Optimizer steps to train for (the run ends with a checkpoint at this step)."""
    max_grad_norm: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this value; 0 disables clipping."""
    mixed_precision: Literal["bf16", "fp32"] = "bf16"
    """bf16 autocast (DDP) or bf16 params with fp32 reduction (FSDP) on CUDA; CPU always runs fp32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available, else CPU."""
    compile: bool = False
    """torch.compile each transformer block."""
    num_threads: int | None = None
    """CPU intra-op threads per process; None: cores divided by the processes on this node."""


class OptimizerConfig(_Section):
    """[optimizer]: AdamW or AdEMAMix hyper-parameters; read by `components.optimizer.build_optimizer`."""

    name: Literal["adamw", "ademamix"] = "adamw"
    """AdamW, or AdEMAMix (arXiv 2409.03137: a second, slow EMA of the gradient mixed in with weight alpha)."""
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate."""
    beta1: float = 0.9
    """First-moment EMA coefficient."""
    beta2: float = 0.95
    """Second-moment EMA coefficient."""
    eps: float = 1e-8
    """Denominator epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices only (not to norms or xIELU scalars)."""
    ademamix_beta3: float = 0.9999
    """AdEMAMix: coefficient of the slow EMA."""
    ademamix_alpha: float = 5.0
    """AdEMAMix: weight of the slow EMA."""
    ademamix_warmup_steps: int | None = None
    """AdEMAMix: steps over which alpha and beta3 ramp up; None: training.max_steps."""


class LRScheduleConfig(_Section):
    """[lr_schedule]: warmup-stable-decay; read by `components.lr_schedule.build_lr_schedule`."""

    warmup_steps: int = Field(100, ge=0)
    """Linear warmup from 0 to the peak learning rate."""
    decay_fraction: float = Field(0.2, ge=0.0, le=1.0)
    """Fraction of training.max_steps spent in the final decay (the 'D' of warmup-stable-decay)."""
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"
    """Shape of the decay; Apertus uses 1-sqrt."""
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Learning rate at the end, as a fraction of the peak."""


class ParallelConfig(_Section):
    """[parallel]: data parallelism and process-group backend; read by `parallelize`."""

    data_parallel: Literal["ddp", "fsdp"] = "ddp"
    """DDP (replicated weights) or FSDP2 (fully_shard: sharded weights, grads and optimizer state)."""
    bucket_cap_mb: float = Field(25.0, gt=0)
    """DDP gradient bucket size; larger buckets fuse small all-reduces."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend; auto: NCCL on CUDA, gloo on CPU."""


class CheckpointConfig(_Section):
    """[checkpoint]: when and how checkpoints are written and resumed; read by `CheckpointManager`."""

    enabled: bool = True
    """Write checkpoints (interval, end of training, preemption)."""
    interval: int | Literal["auto"] = 100
    """Steps between checkpoints, or 'auto': Young's formula T = sqrt(2·C·MTBF) with the measured save stall C."""
    mtbf_s: float = Field(86_400.0, gt=0)
    """Mean time between failures of the whole job, in seconds (for interval='auto')."""
    auto_first_step: int = Field(10, ge=1)
    """With interval='auto': step of the first checkpoint, which measures the save cost."""
    asynchronous: bool = True
    """Snapshot to CPU, then write in a background thread while training continues."""
    keep: int = Field(3, ge=1)
    """Complete checkpoints kept on disk (older ones are deleted)."""
    resume: bool = True
    """Resume from <dir>/latest when it exists."""
    on_damaged: Literal["refuse", "fallback"] = "refuse"
    """At resume, when latest's checkpoint fails its checksums (a file flipped, truncated or missing): 'refuse'
    exits 1 naming the file and the newest intact older checkpoint; 'fallback' resumes from that one."""
    dir: str | None = None
    """Checkpoint directory; None: <run_dir>/checkpoints."""


class MetricsConfig(_Section):
    """[metrics]: JSONL output, console cadence, MFU peak; read by `components.metrics.MetricsLogger`."""

    jsonl: str | None = None
    """Metrics file, one JSON line per step; None: <run_dir>/metrics.jsonl."""
    console_every: int = Field(10, ge=1)
    """Print a console line every N steps."""
    peak_flops: float | None = None
    """Peak FLOP/s per device for MFU; None: from the GPU name (H100/GH200 989e12, A100 312e12), unset on CPU."""


class TrainerConfig(_Section):
    """The whole trainer configuration; saved inside every checkpoint.

    Only the Trainer holds all of it: every component takes its own section (see docs/trainer.md)."""

    job: JobConfig = JobConfig()
    """Run identity and seed."""
    model: ModelConfig = ModelConfig()
    """Model shape."""
    data: DataConfig = DataConfig()
    """Training data."""
    training: TrainingConfig = TrainingConfig()
    """Batch, steps, precision."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimizer."""
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    """Warmup-stable-decay learning-rate schedule."""
    parallel: ParallelConfig = ParallelConfig()
    """Data parallelism."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    """Checkpoints and resume."""
    metrics: MetricsConfig = MetricsConfig()
    """Metrics output."""

    @model_validator(mode="after")
    def _check(self) -> "TrainerConfig":
        if self.data.weights is not None and len(self.data.weights) != len(self.data.paths):
            raise ValueError(f"data.weights has {len(self.data.weights)} entries but data.paths has "
                             f"{len(self.data.paths)}")
        # The shape is checked here, on the names the user writes, so that model_args() never fails later.
        overrides = {k: v for k, v in self.model.model_dump().items() if k != "preset" and v is not None}
        check_shape({**get_preset(self.model.preset).shape_dict(), **overrides}, prefix="model.")
        return self

    def model_args(self) -> ModelArgs:
        """The resolved model shape: preset, then overrides; RoPE table sized to training.seq_len."""
        m = self.model
        return get_preset(m.preset).replace(vocab_size=m.vocab_size, dim=m.dim, n_layers=m.n_layers,
                                            n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
                                            rope_theta=m.rope_theta, max_seq_len=self.training.seq_len)


def _suggest(key: str, choices: list[str]) -> str:
    return f"; {did_you_mean(key, choices)}"


def check_keys(data: dict, schema: type[BaseModel] = TrainerConfig, *, source: str, prefix: str = "") -> None:
    """Reject keys the schema does not define, recursively, suggesting the closest known key."""
    for key, value in data.items():
        fields = schema.model_fields
        dotted = f"{prefix}{key}"
        if key not in fields:
            suggestion = _suggest(dotted, [f"{prefix}{f}" for f in fields])
            raise ConfigError(f"{source}: unknown key {dotted!r}{suggestion}")
        sub = fields[key].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted!r} must be a table [{dotted}], got {value!r}")
            check_keys(value, sub, source=source, prefix=f"{dotted}.")


def _parse_value(text: str) -> Any:
    """TOML literal when it parses (numbers, booleans, arrays, quoted strings), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> dict:
    """['--training.max_steps=5', '--data.paths', '["a"]'] → {'training': {'max_steps': 5}, ...}."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"command line: expected --section.key=value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: --{key} needs a value (--{key}=VALUE)")
            value, i = args[i + 1], i + 1
        parts = key.split(".")
        if len(parts) != 2:
            raise ConfigError(f"command line: --{key}: expected --section.key, e.g. --training.max_steps=10")
        tree.setdefault(parts[0], {})[parts[1]] = _parse_value(value)
        i += 1
    return tree


def resolve_config_path(name: str) -> Path:
    """A preset name under configs/ (e.g. 'tiny') or a path to a .toml file."""
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    preset = CONFIG_DIR / f"{name}.toml"
    if not preset.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ConfigError(f"unknown config {name!r}{_suggest(name, known)}")
    return preset


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(name: str | None = None, overrides: list[str] | None = None) -> TrainerConfig:
    """Defaults, then the TOML file `name`, then CLI `overrides`; raise ConfigError naming the culprit."""
    data: dict = {}
    source = "defaults"
    if name:
        path = resolve_config_path(name)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read it as a TOML file ({e}); pass a readable UTF-8 .toml") from None
        check_keys(data, source=source)
    cli = parse_overrides(overrides or [])
    try:
        check_keys(cli, source="command line")
    except ConfigError as e:  # say it in option syntax
        raise ConfigError(str(e).replace("unknown key '", "unknown option '--").replace("mean '", "mean '--")) from None
    try:
        return TrainerConfig.model_validate(_merge(data, cli))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            if not err["loc"]:  # a whole-config rule (_check): its message names the keys itself
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        if len(problems) == 1:
            raise ConfigError(f"{source} + command line: {problems[0]}") from None
        raise ConfigError("\n  ".join([f"{source} + command line: invalid config:", *problems])) from None
