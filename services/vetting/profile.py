"""Vetting profiles: a YAML list of checks with thresholds per workload, validated strictly (pydantic).

    checks:
      - {check: gpu_memory_free, min_free: 0.9}
      - {check: matmul, size: 2048, min_tflops: {cuda: 400, cpu: 0.002}}

Thresholds that depend on the device are given per device (`cuda`, `cpu`): the same profile vets a GH200
node and an emulated node of the local site.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vocab.explain import model_at

PROFILES = Path(__file__).resolve().parent / "profiles"


class ProfileError(Exception):
    """A profile is missing or invalid; the message names the file, the key and a fix."""


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerDevice(BaseModel):
    """A threshold per device kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cuda: float = Field(description="Threshold on a CUDA GPU.")
    cpu: float = Field(description="Threshold on CPU (nodes without GPUs, the emulated local site).")


class GpuMemoryFree(_Check):
    check: Literal["gpu_memory_free"]
    min_free: float = Field(0.9, gt=0, le=1, description="Share of each GPU's memory that must be free.")


class Matmul(_Check):
    check: Literal["matmul"]
    size: int = Field(2048, ge=64, description="Square matrix size on CPU (fp32).")
    cuda_size: int = Field(8192, ge=64, description="Square matrix size on a CUDA GPU (bf16): large enough that "
                           "kernel launches do not dominate (8192: 1.1 TFLOP a product, ~1.5 ms on an H100).")
    iters: int = Field(10, ge=1, description="Timed multiplications.")
    min_tflops: PerDevice = Field(description="Minimum TFLOP/s.")


class AllReduce(_Check):
    check: Literal["allreduce"]
    size_mb: float = Field(64, gt=0, description="Message size in MB.")
    iters: int = Field(5, ge=1, description="Timed all-reduces.")
    min_busbw_gbps: PerDevice = Field(description="Minimum bus bandwidth in GB/s (nccl-tests' busbw).")


class DiskWrite(_Check):
    check: Literal["disk_write"]
    path: str = Field("tmp", description="Directory under the node root to write to.")
    size_mb: int = Field(64, ge=1, description="Bytes written (then fsync'd).")
    min_mbps: float = Field(description="Minimum write speed in MB/s.")


class EnvVars(_Check):
    check: Literal["env"]
    required: tuple[str, ...] = Field(description="Environment variables every task must have.")


Check = Annotated[Union[GpuMemoryFree, Matmul, AllReduce, DiskWrite, EnvVars], Field(discriminator="check")]
CHECK_KINDS = ("gpu_memory_free", "matmul", "allreduce", "disk_write", "env")


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = Field("", description="What workload these thresholds are for.")
    checks: tuple[Check, ...] = Field(min_length=1, description="Checks, run in order on every node.")


def parse_profile(data: object, source: str) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping with a `checks:` list")
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if p not in CHECK_KINDS)
            key = ".".join(str(p) for p in loc)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                holder = model_at(Profile, err["loc"])  # the check's own model, found through its tag
                near = difflib.get_close_matches(str(loc[-1]), list(holder.model_fields) if holder else [], n=1)
                msg = "unknown key" + (f"; did you mean `{near[0]}`?" if near else "")
            elif err["type"] == "union_tag_invalid":
                msg = f"unknown check {err['input'].get('check')!r}" if isinstance(err["input"], dict) else msg
                near = difflib.get_close_matches(str(err["input"].get("check")), CHECK_KINDS, n=1) \
                    if isinstance(err["input"], dict) else []
                msg += f"; did you mean `{near[0]}`?" if near else f"; known checks: {', '.join(CHECK_KINDS)}"
            lines.append(f"  {key}: {msg}")
        raise ProfileError(f"{source}: invalid vetting profile\n" + "\n".join(lines)) from None


def load_profile(name_or_path: str) -> Profile:
    """A bundled profile by name (`llm`) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise ProfileError(f"no vetting profile {name_or_path!r} (bundled: {known}; or give a .yaml path)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read it ({e}); give a readable UTF-8 YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(yaml_error_line(e, path)) from None
    return parse_profile(data, str(path))


def yaml_error_line(e: yaml.YAMLError, path: Path) -> str:
    """One line for a YAML syntax error: file:line:column, what the parser expected, where it started, a fix."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    # e.g. "while parsing a flow mapping" at the `{` that was never closed: usually where the mistake is
    opened = f" ({context} from line {start.line + 1}, column {start.column + 1})" if context and start else ""
    return (f"{where}: not valid YAML: {problem}{opened}; fix the syntax there (an unclosed bracket or quote, a "
            f"missing ':', tabs in the indentation); the bundled {PROFILES / 'llm.yaml'} shows the format")
