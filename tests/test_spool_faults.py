"""The spool under disk faults: a refused or short write leaves no phantom entry, and a
corrupt record mid-segment costs only its own batch, counted under a named reason.

The disk faults are real kernel refusals: a child process runs with RLIMIT_FSIZE, so a
write that crosses the limit is cut short by the kernel and the next one fails (EFBIG), as
on a disk that fills up. SIGXFSZ is ignored so the write returns the error instead."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from tally.producers.collector.spool import HEADER, Spool, SpoolCorrupt
from tally.schemas.reasons import DropReason

CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from tally.producers.collector.spool import Spool
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    directory, limit, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sp = Spool(directory, max_bytes=1 << 30, segment_bytes=1 << 30)
    sp.open()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    answered, refused = {}, 0
    for n in range(200):
        group = [bytes([n % 251]) * size + str(n).encode() + b"-" + str(k).encode() for k in range(3)]
        try:
            ids = sp.append(group)
        except OSError:
            refused += 1
            continue
        answered.update({i: p.decode("latin-1") for i, p in zip(ids, group) if i is not None})
    print(json.dumps({"answered": answered, "refused": refused, "pending": sp.pending_ids()}))
""")


def _run_child(directory, limit: int, size: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(directory), str(limit), str(size)],
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_a_full_disk_rolls_the_append_back_and_leaves_no_phantom_entry(tmp_path):
    # The limit falls inside a group: the kernel writes part of it (a short write), then refuses.
    limit = 10 * 3 * (HEADER.size + 1003) + 1500
    got = _run_child(tmp_path / "w0", limit, 1000)
    assert got["refused"] > 0 and len(got["answered"]) == 30
    answered = {int(k): v.encode("latin-1") for k, v in got["answered"].items()}
    assert got["pending"] == sorted(answered)  # in memory: nothing refused is pending
    again = Spool(tmp_path / "w0", max_bytes=1 << 30)
    again.open()
    # On disk: exactly the answered batches, byte for byte, once each, and nothing torn.
    assert again.pending_ids() == sorted(answered)
    assert {i: again.read(i) for i in again.pending_ids()} == answered
    assert not again.corrupt
    assert again.append([b"after"]) == [max(answered) + 1]  # and the spool takes writes again
    again.close()


def test_a_flipped_byte_mid_segment_loses_only_its_batch_and_counts_it(tmp_path):
    sp = Spool(tmp_path / "w0", max_bytes=1 << 20, segment_bytes=1 << 20)
    sp.open()
    payloads = {i: f"batch-{i}-".encode() * 20 for i in range(1, 11)}
    assert sp.append(list(payloads.values())) == list(payloads)
    sp.ack([2])
    sp.close()
    seg = sorted((tmp_path / "w0").glob("seg-*.log"))[-1]
    data = bytearray(seg.read_bytes())
    record = HEADER.size + len(payloads[1])
    data[4 * record + HEADER.size + 7] ^= 0x40  # inside batch 5's payload
    data[6 * record + 3] ^= 0x01  # inside batch 7's header (its id)
    seg.write_bytes(bytes(data))

    again = Spool(tmp_path / "w0", max_bytes=1 << 20)
    again.open()
    kept = [i for i in payloads if i not in (2, 5, 7)]
    assert again.pending_ids() == kept  # every answered batch after the damage is still there
    assert {i: again.read(i) for i in kept} == {i: payloads[i] for i in kept}
    assert again.corrupt == {DropReason.SPOOL_CORRUPT: 2}
    assert again.append([b"next"]) == [11]
    again.ack(kept)  # replayed once: acknowledged, nothing left to replay
    again.close()
    final = Spool(tmp_path / "w0", max_bytes=1 << 20)
    final.open()
    assert final.pending_ids() == [11]
    final.close()


def test_a_byte_flipped_while_spooled_is_caught_at_read_and_dropped_counted(tmp_path):
    """Damage after the write (the process still running) is not seen by open(): read()
    checks the CRC again, so the replay never sends damaged bytes on."""
    sp = Spool(tmp_path / "w0", max_bytes=1 << 20, segment_bytes=1 << 20)
    sp.open()
    payloads = [f"batch-{i}-".encode() * 20 for i in range(1, 4)]
    assert sp.append(payloads) == [1, 2, 3]
    seg = sorted((tmp_path / "w0").glob("seg-*.log"))[-1]
    with open(seg, "r+b") as fh:  # batch 2's payload, in place
        fh.seek(2 * HEADER.size + len(payloads[0]) + 9)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x20]))
    assert sp.read(1) == payloads[0] and sp.read(3) == payloads[2]
    with pytest.raises(SpoolCorrupt):
        sp.read(2)
    # The replay reads a window at once: the damaged one is its error, the others their bytes.
    first, damaged, third = sp.read_many([1, 2, 3])
    assert (first, third) == (payloads[0], payloads[2]) and isinstance(damaged, SpoolCorrupt)
    sp.drop(2, DropReason.SPOOL_CORRUPT)
    assert sp.pending_ids() == [1, 3] and sp.corrupt == {DropReason.SPOOL_CORRUPT: 1}
    sp.close()


ACK_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from tally.producers.collector.spool import Spool
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sp = Spool(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=1 << 30)
    sp.open()
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    ids = []
    while True:
        try:
            ids += sp.append([b"x" * 100])
        except OSError:
            break
    sp.ack(ids[:-1])  # no room for their ACK records either
    print(json.dumps({"ids": ids, "pending": sp.pending_ids()}))
""")


def test_acknowledging_on_a_full_disk_still_empties_the_spool(tmp_path):
    # Found by tests/test_chaos_edge.py: the replay's ACK records failed on the full disk,
    # so the replay sent the same batches again and again and the spool never drained.
    out = subprocess.run([sys.executable, "-c", ACK_CHILD, str(tmp_path / "w0")],
                         capture_output=True, text=True, check=True, timeout=60)
    got = json.loads(out.stdout)
    assert len(got["ids"]) > 100 and got["pending"] == got["ids"][-1:]
