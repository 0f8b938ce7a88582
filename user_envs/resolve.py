"""Resolve an EDF by name: search path, inheritance (bases in order, up to 10 levels), `${VAR}` expansion.

Merge rules (cscs-docs edf.md): bases are evaluated in order, then the file itself; `env` and `annotations`
merge with the later value winning; `mounts` append; scalars (`image`, `workdir`, `entrypoint`, `writable`)
overwrite when set. Expansion: `${VAR}` from the caller's environment in every string (undefined is an
error), `${VAR:-}` is empty when undefined, `$$` is a literal `$`. Then relative paths (`./…`, `../…`) in the
parameters (`base_environment`, `image`, `workdir`, `mounts`) are taken from the caller's working directory,
not the EDF's folder (edf.md, "Relative paths expansion"); `[env]` and `[annotations]` values are left as
written (a relative `PYTHONPATH` may be meant to stay relative).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from user_envs.edf import Edf, EdfError, Mount, from_cwd, is_relative, load_edf, parse_mount

MAX_DEPTH = 10  # an EDF and its bases may nest this deep; the 11th level is an error
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-)?\}")


def search_path(environ: Mapping[str, str]) -> list[Path]:
    """Where EDFs are found: `EDF_PATH` (colon-separated) if set, else `~/.edf`."""
    if environ.get("EDF_PATH"):
        return [Path(p) for p in environ["EDF_PATH"].split(":") if p]
    home = environ.get("HOME") or str(Path.home())
    return [Path(home) / ".edf"]


def is_path(name: str) -> bool:
    """`--environment` / `base_environment` names a file (absolute, `./…`, or `….toml`), else a search-path name."""
    return name.startswith("/") or is_relative(name) or name.endswith(".toml")


def find_edf(name: str, environ: Mapping[str, str], referrer: Path | None = None, cwd: str | None = None) -> Path:
    """An EDF by name (`NAME` -> `NAME.toml` in the search path) or by path, relative ones from `cwd`."""
    key = "base_environment" if referrer else None
    if is_path(name):
        p = Path(name if name.startswith("/") else os.path.join(cwd or "", name))
        if p.is_file():
            return p.resolve()
        beside = referrer.parent / name if referrer is not None and not name.startswith("/") else None
        if beside is not None and beside.is_file():  # written for the old rule (beside the EDF): say so
            raise EdfError(referrer, key, f"no EDF file at {p}: relative paths are taken from the working directory "
                                          f"({cwd}), not the EDF's folder; write \"{beside.resolve()}\"")
        raise EdfError(referrer, key, f"no EDF file at {p}; check the path")
    dirs = search_path(environ)
    for d in dirs:
        p = d / f"{name}.toml"
        if p.is_file():
            return p.resolve()
    where = ", ".join(str(d) for d in dirs)
    raise EdfError(referrer, key, f"no environment {name!r}: no {name}.toml in {where}; put it there or set EDF_PATH")


def expand(text: str, environ: Mapping[str, str], path: Path, key: str) -> str:
    """Expand `${VAR}`, `${VAR:-}` and `$$` in one string."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, optional = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if optional:
            return ""
        raise EdfError(path, key, f"${{{name}}} is not set; export {name}, or write ${{{name}:-}} for empty")
    return _VAR.sub(sub, text)


@dataclass(frozen=True)
class ResolvedEdf:
    """An EDF with its bases merged and every variable expanded: what the engine runs."""

    name: str
    chain: tuple[Path, ...]  # the files read, bases first, this one last
    image: str = ""
    workdir: str | None = None
    entrypoint: bool = False
    writable: bool = True
    mounts: tuple[Mount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def hook_enabled(self, hook: str) -> bool:
        return self.annotations.get(f"com.hooks.{hook}.enabled") == "true"

    def to_toml(self) -> str:
        """The fully resolved EDF, as TOML a user could save and use as is."""
        q = _toml_str
        lines = [f"# resolved from: {', '.join(str(p) for p in self.chain)}",
                 f"image = {q(self.image)}"]
        if self.workdir is not None:
            lines.append(f"workdir = {q(self.workdir)}")
        lines += [f"entrypoint = {str(self.entrypoint).lower()}", f"writable = {str(self.writable).lower()}"]
        lines.append("mounts = [" + ", ".join(q(str(m)) for m in self.mounts) + "]")
        for table, items in (("env", self.env), ("annotations", self.annotations)):
            lines += ["", f"[{table}]"] + [f"{q(k) if '.' in k else k} = {q(v)}" for k, v in sorted(items.items())]
        return "\n".join(lines) + "\n"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _expanded(edf: Edf, path: Path, environ: Mapping[str, str], cwd: str | None) -> Edf:
    """The same EDF with every string field expanded (keys of env/annotations are left as written), and
    `image` and `workdir` taken from `cwd` when they start with `./` (mounts: `parse_mount`, bases: `find_edf`)."""
    def x(v: str | None, k: str, relative: bool = False) -> str | None:
        if v is None:
            return None
        v = expand(v, environ, path, k)
        try:
            return from_cwd(v, cwd) if relative else v
        except ValueError as e:
            raise EdfError(path, k, str(e)) from None
    return edf.model_copy(update={
        "base_environment": tuple(x(b, "base_environment") for b in edf.base_environment),
        "image": x(edf.image, "image", relative=True),
        "workdir": x(edf.workdir, "workdir", relative=True),
        "mounts": tuple(x(m, "mounts") for m in edf.mounts),
        "env": {k: x(v, f"env.{k}") for k, v in edf.env.items()},
        "annotations": {k: x(v, f"annotations.{k}") for k, v in edf.annotations.items()},
    })


def _layers(path: Path, environ: Mapping[str, str], cwd: str | None,
            chain: tuple[Path, ...]) -> list[tuple[Path, Edf]]:
    """This EDF and its bases, flattened in evaluation order (bases first, depth first)."""
    if path in chain:
        shown = " -> ".join(str(p) for p in (*chain, path))
        raise EdfError(path, "base_environment", f"inheritance cycle: {shown}; remove one base_environment")
    if len(chain) >= MAX_DEPTH:
        shown = " -> ".join(str(p) for p in (*chain, path))
        raise EdfError(path, "base_environment",
                       f"more than {MAX_DEPTH} levels of base_environment: {shown}; flatten the chain")
    edf = _expanded(load_edf(path), path, environ, cwd)
    out: list[tuple[Path, Edf]] = []
    for base in edf.base_environment:
        out += _layers(find_edf(base, environ, referrer=path, cwd=cwd), environ, cwd, (*chain, path))
    return out + [(path, edf)]


def _working_dir() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:  # removed under us: only an EDF with a relative path needs it (then: an error)
        return None


def resolve(name: str, environ: Mapping[str, str] | None = None, cwd: str | None = None) -> ResolvedEdf:
    """Find `name`, merge its bases and expand its variables; raise EdfError naming file, key and fix.

    `cwd`: where relative paths (`./…`) are taken from, default this process's working directory (the
    directory `strata run` or `srun` was called in: a Slurm task starts there).
    """
    environ = os.environ if environ is None else environ
    cwd = _working_dir() if cwd is None else cwd
    layers = _layers(find_edf(name, environ, cwd=cwd), environ, cwd, ())
    image, workdir, entrypoint, writable = "", None, False, True
    mounts: list[Mount] = []
    env: dict[str, str] = {}
    annotations: dict[str, str] = {}
    for path, edf in layers:
        image = edf.image if edf.image is not None else image
        workdir = edf.workdir if edf.workdir is not None else workdir
        entrypoint = edf.entrypoint if edf.entrypoint is not None else entrypoint
        writable = edf.writable if edf.writable is not None else writable
        for m in edf.mounts:
            try:
                mounts.append(parse_mount(m, cwd))
            except ValueError as e:
                raise EdfError(path, "mounts", str(e)) from None
        env.update(edf.env)
        annotations.update(edf.annotations)
    if workdir is not None and not workdir.startswith("/"):
        raise EdfError(layers[-1][0], "workdir", f"{workdir!r} must be an absolute path, or start with ./ to be "
                                                 f"taken from the working directory (write \"./{workdir}\")")
    return ResolvedEdf(name=name, chain=tuple(dict.fromkeys(p for p, _ in layers)), image=image,
                       workdir=workdir, entrypoint=entrypoint, writable=writable, mounts=tuple(mounts),
                       env=env, annotations=annotations)
