"""The ssh driver's part of the site file: where each host is reached, each vCluster's controller host, the
SSH login and the site's reboot command (pure data + validation, used by vocab/site.py).

Loading a site file stays pure: the key and known_hosts files are read only by `check_ssh_files`, for the
ssh driver to call at `strata up` (raised as a SiteError: exit 2, naming the path and a fix).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import stat
import string
from functools import lru_cache
from typing import TYPE_CHECKING

import hostlist
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from vocab.layout import Layout
    from vocab.site import Site

HOST_RE = r"^[a-z][a-z0-9-]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@lru_cache(maxsize=1024)
def expand_addresses(expr: str) -> tuple[str, ...]:
    """Expand a range of IPv4 addresses written like a hostlist (`198.18.1.[1-8]`), in order, repeats kept
    (so that a repeated address is named, not silently dropped). Cached: a site file's ranges are expanded by
    the model, the cross-checks and `Site.nodes` alike."""
    try:
        return tuple(hostlist.expand_hostlist(expr, allow_duplicates=True))
    except hostlist.BadHostlist as e:
        raise ValueError(
            f"{expr!r} is not a valid address range ({e}); write ranges like 198.18.1.[1-8] or 198.18.1.1,198.18.1.5"
        ) from None


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")  # what ipaddress accepts, ~4x faster (Alps: 2,688)


def _address_problem(addr: str) -> str | None:
    """Why `addr` cannot be a host's address (None when it can): IPv4, unicast (ipaddress's is_unspecified,
    is_loopback, is_multicast and is_reserved are 0.0.0.0, 127/8, 224/4 and 240/4)."""
    m = _IPV4.fullmatch(addr)
    if m is None:
        try:
            ipaddress.IPv4Address(addr)
        except ValueError as e:  # its wording says what is wrong (octets, leading zeros)
            return f"{addr} is not an IPv4 address ({e})"
        return None
    first = int(m.group(1))
    what = ("the unspecified" if addr == "0.0.0.0" else "a loopback" if first == 127
            else "a multicast" if 224 <= first <= 239 else "a reserved (or broadcast)" if first >= 240 else None)
    return f"{addr} is {what} address, not one a host can be reached at" if what else None


def check_addresses(addrs: tuple[str, ...] | list[str], fix: str) -> None:
    """Raise ValueError naming the addresses no host can have (the first three), then `fix`."""
    bad = [p for p in map(_address_problem, addrs) if p]
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ValueError(f"{'; '.join(bad[:3])}{more}; {fix}")


class Controller(_Model):
    """The host that runs a vCluster's munged and slurmctld (driver: ssh), reached over SSH like the nodes."""

    host: str = Field(pattern=HOST_RE, description="Its host name, e.g. clariden-ctl: Slurm's SlurmctldHost.")
    address: str = Field(description="Its IPv4 address: where strata and the vCluster's nodes reach it.")

    @field_validator("address")
    @classmethod
    def _address_is_ipv4(cls, v: str) -> str:
        check_addresses([v], "give the unicast IPv4 address the controller host is reached at, e.g. 198.18.0.11")
        return v


class Ssh(_Model):
    """How strata logs in to a real site's hosts (driver: ssh). Host keys are always checked."""

    user: str = Field("root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="Login user on every host.")
    key: str | None = Field(
        None, description="Private key file, an absolute path; default <state>/<site>/ssh/id_ed25519. "
        "Read at `strata up` (checked there, not when the site file loads)."
    )
    known_hosts: str | None = Field(
        None, description="known_hosts file holding every host's key, an absolute path; default "
        "<state>/<site>/ssh/known_hosts. A host whose key is not in it (or changed) is refused."
    )
    port: int = Field(22, ge=1, le=65535, description="sshd port of every host.")

    @field_validator("key", "known_hosts")
    @classmethod
    def _path_is_absolute(cls, v: str | None, info: ValidationInfo) -> str | None:
        # absolute, not relative to the site file: Pulumi and strata run from anywhere, and an absolute path
        # reads the same in the site file, the error and the ssh command line
        if v is not None and not v.startswith("/"):
            raise ValueError(f"{v!r} is not an absolute path; give the full path, e.g. /etc/strata/ssh/"
                             f"{'id_ed25519' if info.field_name == 'key' else 'known_hosts'}, or leave it out "
                             "for the default under the state dir")
        return v


REBOOT_FIELDS = ("node", "image", "address")


class Reboot(_Model):
    """How a node boots into an image (driver: ssh): the site's boot tool or BMC command, and how long to wait.

    The command is split into words as a shell would (quotes group), each `{placeholder}` filled in per node,
    and run without a shell (write `sh -c '…'` for pipes). `{node}` is required; `{image}` (the target
    vCluster's image) may be left out by a command that only power-cycles a node whose boot server picks the
    image; `{address}` is the node's address.
    """

    command: str = Field(description="Command template, e.g. \"bootctl --node {node} --image {image}\"; "
                         "placeholders {node} (required), {image}, {address}.")
    timeout: float = Field(300, gt=0, description="Seconds a node may take to come back after the command: "
                           "until SSH answers and the node reports the target's image.")

    @field_validator("command")
    @classmethod
    def _command_is_template(cls, v: str) -> str:
        allowed = ", ".join(f"{{{f}}}" for f in REBOOT_FIELDS)
        try:
            words = shlex.split(v)
            fields = {f for w in words for _, f, _, _ in string.Formatter().parse(w) if f is not None}
        except ValueError as e:
            raise ValueError(f"{v!r} is not a command template ({e}); close every quote and brace, and write a "
                             "literal brace as {{ or }}") from None
        if not words:
            raise ValueError("no command given; write the boot tool's command, "
                             "e.g. \"bootctl --node {node} --image {image}\"")
        unknown = sorted(fields - set(REBOOT_FIELDS))
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} in {v!r}; allowed: {allowed}")
        if "node" not in fields:
            raise ValueError(f"{v!r} does not say which node: put {{node}} where the node's name goes, "
                             "e.g. \"bootctl --node {node} --image {image}\"")
        return v

    def argv(self, node: str, image: str, address: str | None) -> list[str]:
        """The command for one node, as words (run without a shell)."""
        return [w.format(node=node, image=image, address=address or "") for w in shlex.split(self.command)]


def check_ssh_files(site: "Site", layout: "Layout") -> list[str]:
    """Problems with the SSH files an ssh site needs, one line each (`key: what; fix`), for `SiteError`:
    the private key (a readable file, closed to group and others: ssh refuses a key that is not) and
    known_hosts (a readable file). For the ssh driver to call at `strata up`; [] for the local driver."""
    if site.spec.driver != "ssh":
        return []
    problems = []
    for key, path, make in (
        ("ssh.key", layout.ssh_key, f"create it (ssh-keygen -t ed25519 -N '' -f {layout.ssh_key})"),
        ("ssh.known_hosts", layout.known_hosts,
         f"write every host's key into it (ssh-keyscan -H ADDRESS >> {layout.known_hosts}, checking each key)"),
    ):
        where = key if getattr(site.ssh, key.split(".")[1]) else f"{key} (default)"
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISREG(mode):
                with open(path, "rb"):
                    pass
        except FileNotFoundError:
            problems.append(f"{where}: {path} does not exist; {make}, or set {key} to the file to use")
            continue
        except OSError as e:
            problems.append(f"{where}: cannot read {path} ({e.strerror}); let the user running strata (root) "
                            f"read it, or set {key} to a file it can read")
            continue
        if not stat.S_ISREG(mode):
            problems.append(f"{where}: {path} is not a regular file; set {key} to the file to use")
        elif key == "ssh.key" and mode & 0o077:
            problems.append(f"{where}: {path} is open to group or others (mode {stat.S_IMODE(mode):04o}), and ssh "
                            f"refuses such a key; chmod 600 {path}")
    return problems
