"""The Environment Definition File (EDF): one TOML file as a user writes it, validated.

Format and semantics follow CSCS's container engine (cscs-docs container-engine/edf.md), so that a user's
existing EDF works unchanged: `base_environment`, `image`, `workdir`, `entrypoint`, `writable`, `mounts`,
`[env]`, `[annotations]`. Inheritance and `${VAR}` expansion live in `user_envs/resolve.py`; this module only
reads one file into an `Edf` (fields left unset stay `None`, so that a base's value survives) and parses mounts.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator


class EdfError(Exception):
    """Invalid EDF or environment: names the file, the key and a fix (the CLI exits 2)."""

    def __init__(self, path: str | Path | None, key: str | None, message: str):
        self.path = str(path) if path else None
        self.key = key
        where = ": ".join(x for x in (self.path, key) if x)
        super().__init__(f"{where}: {message}" if where else message)


# Mount flags, joined by '+': ro/rw, propagation, and `sqsh` (the source is a SquashFS image, mounted at DST).
MOUNT_FLAGS = ("ro", "rw", "private", "rprivate", "slave", "rslave", "shared", "rshared", "recursive", "sqsh")


@dataclass(frozen=True)
class Mount:
    """One `SRC:DST[:FLAGS]` entry of `mounts`."""

    src: str
    dst: str
    flags: tuple[str, ...] = ()

    @property
    def readonly(self) -> bool:
        return "ro" in self.flags

    def __str__(self) -> str:
        return f"{self.src}:{self.dst}" + (f":{'+'.join(self.flags)}" if self.flags else "")


def parse_mount(text: str) -> Mount:
    """Parse `SRC:DST[:FLAGS]`; raise ValueError saying what to write."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"{text!r} is not SRC:DST[:FLAGS]; write e.g. \"/scratch/me:/scratch:ro+private\"")
    src, dst = parts[0], parts[1]
    for side, p in (("source", src), ("destination", dst)):
        if not p.startswith("/"):
            raise ValueError(f"{text!r}: the {side} {p!r} must be an absolute path")
    flags = tuple(parts[2].split("+")) if len(parts) == 3 and parts[2] else ()
    for f in flags:
        if f not in MOUNT_FLAGS:
            close = difflib.get_close_matches(f, MOUNT_FLAGS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed flags: {', '.join(MOUNT_FLAGS)}"
            raise ValueError(f"{text!r}: unknown mount flag {f!r}; {hint} (join flags with '+')")
    if "ro" in flags and "rw" in flags:
        raise ValueError(f"{text!r}: flags ro and rw contradict each other; keep one")
    return Mount(src, dst, flags)


def flatten_annotations(table: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`[annotations]` with dotted keys or nested tables -> flat `{"com.hooks.x.enabled": "true"}`."""
    out: dict[str, str] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            sub = flatten_annotations(v, f"{key}.")
        elif isinstance(v, str):
            sub = {key: v}
        else:
            raise ValueError(f"annotation {key!r} = {v!r} is not a string; quote it: {key} = \"{v}\"")
        for sk in sub:
            if sk in out:
                raise ValueError(f"annotation {sk!r} is given twice (as a dotted key and as a table); keep one")
        out.update(sub)
    return out


class Edf(BaseModel):
    """One EDF as written. `None` means "not set here" (a base's value, or the default, applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_environment: tuple[str, ...] = Field((), description="EDFs this one extends, evaluated in order.")
    image: str | None = Field(None, description="`[USER@][REGISTRY#]IMAGE[:TAG]`, a local SquashFS file or "
                                                "directory; \"\" runs on the host without a container.")
    workdir: str | None = Field(None, description="Working directory of the process in the container.")
    entrypoint: StrictBool | None = Field(None, description="Run the image's entrypoint (default false).")
    writable: StrictBool | None = Field(None, description="The container's root is writable (default true); "
                                                    "changes are discarded when it ends.")
    mounts: tuple[str, ...] = Field((), description="Bind mounts `SRC:DST[:FLAGS]`, appended to the bases'.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment; \"\" unsets a variable.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations (switch hooks on).")

    @field_validator("base_environment", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("annotations", mode="before")
    @classmethod
    def _flat_annotations(cls, v: Any) -> Any:
        return flatten_annotations(v) if isinstance(v, dict) else v

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for k, val in v.items():
                if not isinstance(val, str):
                    raise ValueError(f"env {k!r} = {val!r} is not a string; quote it: {k} = \"{val}\"")
                if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                    raise ValueError(f"env name {k!r} is not a valid variable name; use letters, digits, '_'")
        return v


def _explain(path: Path, err: dict) -> EdfError:
    loc = [str(p) for p in err["loc"]]
    key = loc[0] if loc else None
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key or "", list(Edf.model_fields), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(Edf.model_fields)}"
        return EdfError(path, key, f"unknown key; {hint}")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":
        return EdfError(path, key, msg)
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) else ""
    return EdfError(path, ".".join(loc), f"{msg}{shown}; fix the value (see docs/user_envs.md)")


def load_edf(path: Path) -> Edf:
    """Read and validate one EDF file (no inheritance, no expansion)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EdfError(path, None, "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise EdfError(path, None, f"not valid TOML ({e}); fix the syntax") from None
    try:
        return Edf.model_validate(data)
    except ValidationError as e:
        raise _explain(path, e.errors()[0]) from None
