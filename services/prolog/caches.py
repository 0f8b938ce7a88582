"""Flush the node's file caches before a job: stale page cache holds memory the job should get (GH200 shares it)."""

from __future__ import annotations

import os
from pathlib import Path

DROP_CACHES = "proc/sys/vm/drop_caches"


def flush_caches(root: Path) -> str:
    """`sync`, then write 3 (page cache + dentries and inodes) to the node's drop_caches.

    On the local site the node root is emulated, so this writes the emulated file, never the host's.
    """
    path = root / DROP_CACHES
    if not path.exists():
        return "skipped: no drop_caches"  # a container or a root without /proc: nothing to flush
    os.sync()
    path.write_text("3\n")
    return "dropped"
