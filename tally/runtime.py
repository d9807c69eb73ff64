"""What every command needs when it starts a process: the console for messages to the
operator, the settings (read once, validated, or a clear exit), and logging.

The stage commands (`tally collector`, `tally sink`, `tally query`, ...) and the operator
commands (tally.ops) all start here, so neither needs the other."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

from tally.config import Settings, SettingsError

console = Console(stderr=True, soft_wrap=True)  # lines stay whole for scripts and logs


def load_settings(stack: bool = False) -> Settings:
    """Settings from the environment. stack=True also applies the TALLY_* variables
    `tally up` was given (kept in <state>/run/env.json), so `status`, `query` and
    `down` find the stack where it was started."""
    # Every file a Tally process creates (state, logs, spool, run/env.json) is its owner's only.
    os.umask(0o077)
    try:
        settings = Settings.from_env()
        saved = settings.run_dir / "env.json"
        if stack and saved.exists():
            settings = Settings.from_env({**json.loads(saved.read_text()), **os.environ})
        _private(settings.state_dir)
        return settings
    except SettingsError as exc:
        console.print(f"[red]configuration error[/red]: {exc}")
        sys.exit(2)


def _private(state_dir: Path) -> None:
    """A state dir made before umask 077 applied (or by hand) is closed to others too."""
    try:
        if state_dir.is_dir() and state_dir.stat().st_mode & 0o077:
            state_dir.chmod(0o700)
    except OSError:  # not ours: leave it, the files inside are still created 0600
        pass


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
