"""The Environment Definition File (EDF): one TOML file as a user writes it, validated.

Format and semantics follow CSCS's container engine (cscs-docs container-engine/edf.md), so that a user's
existing EDF works unchanged: `base_environment`, `image`, `workdir`, `entrypoint`, `writable`, `mounts`,
`[env]`, `[annotations]`. Inheritance and `${VAR}` expansion live in `user_envs/resolve.py`; this module only
reads one file into an `Edf` (fields left unset stay `None`, so that a base's value survives) and parses mounts.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from vocab.explain import did_you_mean


class EdfError(Exception):
    """Invalid EDF or environment: names the file, the key and a fix (the CLI exits 2)."""

    def __init__(self, path: str | Path | None, key: str | None, message: str):
        self.path = str(path) if path else None
        self.key = key
        where = ": ".join(x for x in (self.path, key) if x)
        super().__init__(f"{where}: {message}" if where else message)


# Mount flags, joined by '+', are bind-mount options forwarded to runc as the OCI mount's `options` (the words
# runc 1.1 knows, libcontainer/specconv; the kernel applies them). A word runc does not know becomes
# file-system data, which a bind ignores: a typo (`nosiud`) would silently do nothing, so it is refused.
MOUNT_OPTIONS = frozenset("""
    ro rw nosuid suid nodev dev noexec exec noatime atime nodiratime diratime relatime norelatime strictatime
    nostrictatime sync async dirsync mand nomand silent loud lazytime nolazytime iversion noiversion acl noacl
    defaults bind rbind
    private rprivate shared rshared slave rslave unbindable runbindable
    rro rrw rnosuid rsuid rnodev rdev rnoexec rexec rnoatime ratime rnodiratime rdiratime rrelatime rnorelatime
    rstrictatime rnostrictatime rnosymfollow rsymfollow
""".split())
PROPAGATION = frozenset({"private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"})
# The engine's own words: `sqsh` (the source is a SquashFS image: its tree is bound read-only at DST) and
# `recursive` (kept from earlier releases; binds are recursive anyway, as pyxis makes them).
ENGINE_FLAGS = frozenset({"sqsh", "recursive"})
# Options runc knows but that cannot mean anything for a bind, or make runc fail with a message naming none of
# the EDF: refused with the reason.
REFUSED_FLAGS = {
    "remount": "it would remount the destination instead of binding the source; write the options alone "
               "(e.g. ro+nosuid)",
    "tmpcopyup": "it applies to tmpfs mounts only",
    "idmap": "id-mapped binds are not supported by this engine",
    "ridmap": "id-mapped binds are not supported by this engine",
}
_CONTRADICTIONS = (("ro", "rw"), ("rro", "rrw"))


@dataclass(frozen=True)
class Mount:
    """One `SRC[:DST[:FLAGS]]` entry of `mounts`, both paths absolute."""

    src: str
    dst: str
    flags: tuple[str, ...] = ()

    @property
    def readonly(self) -> bool:
        return "ro" in self.flags or "rro" in self.flags

    def __str__(self) -> str:
        return f"{self.src}:{self.dst}" + (f":{'+'.join(self.flags)}" if self.flags else "")


def is_relative(path: str) -> bool:
    """A path written relative to the caller's working directory: `.`, `..`, `./…` or `../…` (CSCS's rule)."""
    return path in (".", "..") or path.startswith(("./", "../"))


def from_cwd(path: str, cwd: str | None) -> str:
    """`path` with a leading `./` or `../` taken from `cwd`, the caller's working directory (`None`: it is gone).

    CSCS's engine expands relative paths against the working directory of the process that calls it, not the
    EDF's folder; absolute paths and anything else (a registry image, a name) are returned as written.
    """
    if not is_relative(path):
        return path
    if cwd is None:
        raise ValueError(f"{path!r} is taken from the working directory, which no longer exists; cd to one that "
                         "does, or write an absolute path")
    return os.path.normpath(os.path.join(cwd, path))


def _check_flag(text: str, f: str) -> None:
    if f in MOUNT_OPTIONS or f in ENGINE_FLAGS:
        return
    if f in REFUSED_FLAGS:
        raise ValueError(f"{text!r}: mount flag {f!r} is refused: {REFUSED_FLAGS[f]}; remove it")
    if "," in f:  # enroot's fstab separator; pyxis and CSCS's engine take '+' ("ro+private")
        raise ValueError(f"{text!r}: mount flag {f!r}: join flags with '+', not ','; write {f.replace(',', '+')!r}")
    if "=" in f:
        raise ValueError(f"{text!r}: {f!r} is file-system data, which a bind mount ignores; remove it")
    known = sorted(MOUNT_OPTIONS | ENGINE_FLAGS)
    close = difflib.get_close_matches(f, known, n=1, cutoff=0.5)
    hint = (f"did you mean {close[0]!r}?" if close else
            "flags are bind-mount options such as ro, nosuid, nodev, noexec, private, rbind, or sqsh")
    raise ValueError(f"{text!r}: unknown mount flag {f!r}; {hint} (join flags with '+'; see docs/user_envs.md)")


def _mount_path(text: str, side: str, p: str, cwd: str | None) -> str:
    if p.startswith("/"):
        return p
    if is_relative(p):
        return from_cwd(p, cwd)
    if side == "destination" and all(f in MOUNT_OPTIONS or f in ENGINE_FLAGS for f in p.split("+")):
        src = text.split(":")[0]  # `/capstor:ro`: flags need the destination written out
        raise ValueError(f"{text!r}: {p!r} is read as the destination; to mount {src} at the same path with "
                         f"these flags write \"{src}:{src}:{p}\"")
    raise ValueError(f"{text!r}: the {side} {p!r} must be an absolute path, or start with ./ to be taken from "
                     f"the working directory (write \"./{p}\")")


def parse_mount(text: str, cwd: str | None = None) -> Mount:
    """Parse `SRC[:DST[:FLAGS]]` (a bare `SRC` mounts it at the same path); raise ValueError saying what to write.

    Paths starting with `./` or `../` are taken from `cwd`, the caller's working directory.
    """
    parts = text.split(":")
    if len(parts) > 3 or not all(parts[:2]):
        raise ValueError(f"{text!r} is not SRC[:DST[:FLAGS]]; write e.g. \"/capstor\" or "
                         "\"/scratch/me:/scratch:ro+private\"")
    src = _mount_path(text, "source", parts[0], cwd)
    dst = _mount_path(text, "destination", parts[1], cwd) if len(parts) > 1 else src
    flags = tuple(parts[2].split("+")) if len(parts) == 3 and parts[2] else ()
    for f in flags:
        _check_flag(text, f)
    for a, b in _CONTRADICTIONS:
        if a in flags and b in flags:
            raise ValueError(f"{text!r}: flags {a} and {b} contradict each other; keep one")
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
    mounts: tuple[str, ...] = Field((), description="Bind mounts `SRC[:DST[:FLAGS]]` (flags joined by '+'), "
                                                     "appended to the bases'.")
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
        return EdfError(path, key, f"unknown key; {did_you_mean(key or '', list(Edf.model_fields))}")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":
        return EdfError(path, key, msg)
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) else ""
    return EdfError(path, ".".join(loc), f"{msg}{shown}; fix the value (see docs/user_envs.md)")


def _toml_fix(text: str, error: str) -> str:
    """How to fix a TOML error; a line ending in ',' gets its own hint: the `[env]` examples of the CSCS docs
    end lines with one, which TOML (and so CSCS's own parser) does not allow outside arrays and inline tables."""
    m = re.search(r"at line (\d+)", error)
    lines = text.splitlines()
    if m and 0 < int(m.group(1)) <= len(lines) and lines[int(m.group(1)) - 1].split("#")[0].rstrip().endswith(","):
        return f"remove the ',' ending line {m.group(1)}: a TOML key = value line ends without one"
    return "fix the syntax"


def load_edf(path: Path) -> Edf:
    """Read and validate one EDF file (no inheritance, no expansion)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EdfError(path, None, "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise EdfError(path, None, f"not valid TOML ({e}); {_toml_fix(path.read_text(), str(e))}") from None
    try:
        return Edf.model_validate(data)
    except ValidationError as e:
        raise _explain(path, e.errors()[0]) from None
