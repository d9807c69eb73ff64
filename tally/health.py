"""Health reports of long-running processes, for `tally status`: each process writes a small
JSON file under `<state>/run/health/` (mode 0600), replaced atomically, and keeps it when
it exits after a failure, so status can say why it went."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tally.config import Settings


def _dir(settings: Settings) -> Path:
    return settings.run_dir / "health"


def write(settings: Settings, component: str, report: dict[str, Any]) -> None:
    path = _dir(settings) / f"{component}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({**report, "pid": os.getpid(), "updated": time.time()}, fh)
    os.replace(tmp, path)


def read(settings: Settings, component: str) -> list[dict[str, Any]]:
    """The reports of a component's processes, newest first; `alive` says if the process runs."""
    out = []
    for path in _dir(settings).glob(f"{component}-*.json"):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        report["alive"] = Path(f"/proc/{report.get('pid')}").exists()
        out.append(report)
    return sorted(out, key=lambda r: -r.get("updated", 0))


def forget_dead(settings: Settings, component: str) -> None:
    """Remove the reports of processes that are gone (`tally up` starts afresh)."""
    for report in read(settings, component):
        if not report["alive"]:
            (_dir(settings) / f"{component}-{report.get('pid')}.json").unlink(missing_ok=True)
