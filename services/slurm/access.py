"""Who may use a vCluster: the Unix groups of its `access.groups` in the site file, enforced by munge and Slurm.

Munge is the lock: a client that cannot reach the vCluster's munged socket gets no credential, and without
one no daemon of that vCluster will talk to it (`sbatch` there fails with munge's `Failed to access
".../munge.sock": Permission denied`). So the socket's folder is made searchable by root and the allowed
groups only. A folder has one group: with one allowed group it is that group's, mode 0750; with several it
keeps group root, mode 0750, and a POSIX ACL gives each group `r-x` (written as the kernel's
`system.posix_acl_access` attribute, what `setfacl` writes; no package needed). munged runs with `--force`
because it warns when its socket is not reachable by all. Slurm's partition `AllowGroups=` is the second lock
(rendered from the same groups). The checks of strata's own commands (`refusal`) only say it clearly first.

Unset `access`: every local user may use the vCluster, as before (folder 0755, no ACL).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import struct
from pathlib import Path

from vocab.site import Site, SiteError

ACL_XATTR = "system.posix_acl_access"
# struct posix_acl_xattr_header / _entry (linux/posix_acl_xattr.h): le32 version 2, then le16 tag, le16 perm, le32 id
_ACL_VERSION = 2
_USER_OBJ, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF


class AccessError(SiteError):
    """The site file's access groups cannot be applied on this host: named with the file and key, like any
    site file error (`strata up` exits 2), and raised before munged or slurm.conf changes."""


def groups_key(site: Site, vcluster: str) -> str:
    """The site file key of a vCluster's allowed groups, as error messages name it."""
    return f"platforms.{site.platform_of[vcluster]}.vclusters.{vcluster}.access.groups"


def allowed_groups(site: Site, vcluster: str) -> tuple[str, ...] | None:
    """The groups that may use `vcluster`; None when it is open to every local user."""
    access = site.vclusters[vcluster].access
    return access.groups if access else None


def group_ids(groups: tuple[str, ...], site_file: str, key: str) -> tuple[int, ...]:
    """The gids of `groups` on this host; AccessError naming the file and key for one that is missing."""
    gids = []
    for g in groups:
        try:
            gids.append(grp.getgrnam(g).gr_gid)
        except KeyError:
            raise AccessError(site_file, [f"{key}: group {g!r} does not exist on this host; create it "
                                          f"(`groupadd {g}`, then add the vCluster's users to it) or fix the "
                                          "key"]) from None
    return tuple(gids)


def acl_xattr(gids: tuple[int, ...]) -> bytes:
    """An access ACL: owner rwx, owning group none, each of `gids` r-x, mask r-x, others none (mode 0750)."""
    entries = [(_USER_OBJ, 7, _NO_ID), (_GROUP_OBJ, 0, _NO_ID), *((_GROUP, 5, g) for g in sorted(set(gids))),
               (_MASK, 5, _NO_ID), (_OTHER, 0, _NO_ID)]  # the kernel wants entries sorted by tag, then id
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def acl_groups(path: Path) -> tuple[int, ...]:
    """The gids a folder's access ACL names (empty when it has none)."""
    try:
        data = os.getxattr(path, ACL_XATTR)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return ()
        raise
    entries = (struct.unpack_from("<HHI", data, off) for off in range(4, len(data), 8))
    return tuple(i for tag, _perm, i in entries if tag == _GROUP)


def _drop_acl(path: Path) -> None:
    try:
        os.removexattr(path, ACL_XATTR)
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise


def restrict_dir(path: Path, gids: tuple[int, ...] | None, site_file: str = "", key: str = "access.groups") -> None:
    """Open `path` to root and the groups `gids` only (0750; an ACL for several), or to all (None: 0755).

    Applied on every start, also to a running munged's folder: access checks happen at each connect.
    `site_file` and `key` name where the groups come from, in an error.
    """
    st = path.stat()
    owner_group = 0 if gids is None or len(set(gids)) > 1 else gids[0]
    if st.st_gid != owner_group:
        os.chown(path, -1, owner_group)
    if gids is None:
        _drop_acl(path)
        path.chmod(0o755)
        return
    path.chmod(0o750)  # before the ACL: chmod rewrites its mask entry
    if owner_group:
        _drop_acl(path)
        return
    try:
        os.setxattr(path, ACL_XATTR, acl_xattr(gids))
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
        raise AccessError(site_file, [f"{key}: several groups need a POSIX ACL on {path} (a folder has one "
                                      "group), and its filesystem has none; allow one group, or keep the state "
                                      "dir on a filesystem with ACLs (ext4, xfs, tmpfs)"]) from None


def refusal(site: Site, vcluster: str, uid: int | None = None, gids: set[int] | None = None) -> str | None:
    """Why the calling user may not use `vcluster` (one line: the vCluster, its groups, the fix); None if
    they may. Root may always; the groups are the process's own, which is what the munge socket checks."""
    groups = allowed_groups(site, vcluster)
    uid = os.getuid() if uid is None else uid
    if groups is None or uid == 0:
        return None
    mine = {os.getgid(), *os.getgroups()} if gids is None else gids
    known = {}
    for g in groups:
        try:
            known[g] = grp.getgrnam(g).gr_gid
        except KeyError:
            pass
    if mine & set(known.values()):
        return None
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    shown = ", ".join(groups)
    which = f"group {groups[0]}" if len(groups) == 1 else f"one of the groups {shown}"
    return (f"vCluster {vcluster} is open to members of {shown} only ({groups_key(site, vcluster)} in "
            f"{site.path}), and you ({user}) are in none of them; ask an admin to add you to {which}, "
            "then log in again")
