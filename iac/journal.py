"""The site's move journal (`journal.jsonl`): every step of every move, appended and fsynced.

It is the audit trail and carries what Slurm cannot hold for us (an admin's drain reason to restore after
a forced move). Fault injection for tests: STRATA_KILL_AT=<step>:<event>[:<n>] SIGKILLs this process right
after the n-th (default first) matching record is on disk, so crash tests stop at an exact step.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path


class Journal:
    def __init__(self, path: Path):
        self.path = path
        self.run = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self._kill = self._parse_kill(os.environ.get("STRATA_KILL_AT", ""))
        self._seen = 0

    @staticmethod
    def _parse_kill(spec: str) -> tuple[str, str, int] | None:
        if not spec:
            return None
        parts = spec.split(":")
        return parts[0], parts[1], int(parts[2]) if len(parts) > 2 else 1

    def record(self, step: str, event: str, node: str | None = None, **detail) -> None:
        """Append one record: step (drain, wait, detach, reboot, admit, resume), event (start, done, …)."""
        rec = {"ts": round(time.time(), 3), "run": self.run, "step": step, "event": event}
        if node:
            rec["node"] = node
        rec.update(detail)
        line = (json.dumps(rec, sort_keys=True) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+") as f:
                # a write cut short (full disk, crash) leaves a line without its end: start on a new line
                # so that only the torn record is lost, never the next one
                if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                    line = b"\n" + line
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a write error carries no file name: say which file could not take it
            raise OSError(e.errno, f"cannot write the move journal: {e.strerror}", str(self.path)) from None
        if self._kill and self._kill[:2] == (step, event):
            self._seen += 1
            if self._seen == self._kill[2]:
                os.kill(os.getpid(), signal.SIGKILL)

    def records(self) -> list[dict]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash mid-write is skipped
        return out

    def carried_reason(self, node: str) -> str | None:
        """An admin's drain reason recorded by a forced move that has not yet restored it."""
        reason = None
        for r in self.records():
            if r.get("node") != node:
                continue
            if r["step"] == "drain" and r["event"] == "admin-drain-carried":
                reason = r["reason"]
            elif r["step"] == "resume" and r["event"] == "done":
                reason = None
        return reason

    def moving(self) -> dict[str, str]:
        """Nodes whose last move has started but not finished -> their target ('free' for the pool)."""
        out: dict[str, str] = {}
        for r in self.records():
            if r["step"] == "move" and r["event"] == "start":
                out[r["node"]] = r["target"]
            elif r["step"] == "move" and r["event"] in ("done", "held"):
                out.pop(r["node"], None)
        return out
