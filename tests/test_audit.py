"""The audit log: every edit, deletion, reordering and truncation is caught; a crash mid-append
is a torn tail, not tampering; rotation keeps the chain; a full disk loses nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from edge.delivery.audit import AuditLog, verify
from edge.errors import EdgeError


def filled(folder: Path, n: int = 12, **kw: int) -> AuditLog:
    log = AuditLog(folder, **kw)
    log.append("start", {"version": "t"})
    for i in range(n - 2):
        log.append("event", {"identity_id": f"id{i}", "score": 0.7})
    log.append("stop", {"events": n - 2})
    return log


def lines_of(folder: Path) -> tuple[Path, list[bytes]]:
    (seg,) = sorted(folder.glob("audit-*.jsonl"))
    return seg, seg.read_bytes().splitlines(keepends=True)


def test_an_intact_log_verifies_and_names_its_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = filled(tmp_path / "audit")
    v = verify(tmp_path / "audit")
    assert (
        v.ok
        and v.records == 12
        and v.head == log.head
        and v.message == f"12 records, chain intact, head {log.head.hash}"
    )
    assert main(["audit", "verify", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"12 records, chain intact, head {log.head.hash}"
    assert main(["audit", "verify", "--state-dir", str(tmp_path), "--head", log.head.hash, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_seq"] == 12


def tamper(seg: Path, lines: list[bytes], how: str) -> None:
    if how == "edited":
        rec = json.loads(lines[5])
        rec["data"]["score"] = 0.99
        lines[5] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    elif how == "edited and re-hashed":
        from edge.delivery.audit import _digest

        rec = json.loads(lines[5])
        rec["data"]["identity_id"] = "someone-else"
        rec["hash"] = _digest(rec["prev"], rec["seq"], rec["ts"], rec["kind"], rec["data"])
        lines[5] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    elif how == "removed":
        del lines[5]
    elif how == "reordered":
        lines[4], lines[5] = lines[5], lines[4]
    elif how == "inserted":
        lines.insert(5, lines[3])
    elif how == "garbled":
        lines[5] = b'{"not": "a record"}\n'
    seg.write_bytes(b"".join(lines))


@pytest.mark.parametrize("how", ["edited", "edited and re-hashed", "removed", "reordered", "inserted", "garbled"])
def test_every_kind_of_tampering_is_caught_at_the_first_broken_record(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    filled(tmp_path / "audit")
    seg, lines = lines_of(tmp_path / "audit")
    tamper(seg, lines, how)
    v = verify(tmp_path / "audit")
    assert not v.ok
    expected = {"edited": "record 6 (audit-000001.jsonl line 6) was altered",
                "edited and re-hashed": "record 7 (audit-000001.jsonl line 7) does not follow record 6: records altered",
                "removed": "record 7 (audit-000001.jsonl line 6) does not follow record 5: records removed",
                "reordered": "record 6 (audit-000001.jsonl line 5) does not follow record 4: records reordered",
                "inserted": "record 4 (audit-000001.jsonl line 6) does not follow record 5: records reordered or inserted",
                "garbled": "record at audit-000001.jsonl line 6 is not a valid record"}  # fmt: skip
    assert v.message.startswith(expected[how]), v.message
    assert main(["audit", "verify", "--state-dir", str(tmp_path)]) == 1
    assert expected[how] in capsys.readouterr().out


def test_a_log_cut_at_a_record_boundary_is_caught_with_a_recorded_head(tmp_path: Path) -> None:
    log = filled(tmp_path / "audit")
    head = log.head.hash  # what a subscriber kept from a status message
    seg, lines = lines_of(tmp_path / "audit")
    seg.write_bytes(b"".join(lines[:-3]))
    assert verify(tmp_path / "audit").ok  # on its own a cut chain looks whole
    v = verify(tmp_path / "audit", head=head)
    assert not v.ok and "is not in the chain: the log was cut or rewritten after it was recorded" in v.message
    assert main(["audit", "verify", "--state-dir", str(tmp_path), "--head", head]) == 1


def test_a_crash_mid_append_is_a_torn_tail_repaired_on_restart(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    script = (
        "import sys; from pathlib import Path; from edge.delivery.audit import AuditLog\n"
        f"log = AuditLog(Path({str(folder)!r}))\n"
        "i = 0\n"
        "while True:\n"
        "    log.append('event', {'identity_id': 'x' * 2000, 'n': i}); i += 1\n"
        "    if i == 50: print('ready', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    seg, lines = lines_of(folder)
    seg.write_bytes(seg.read_bytes() + lines[-1][:700])  # the kill may land between writes: make the cut certain
    v = verify(folder)
    assert v.ok and v.torn_tail and "the last record was cut by a crash (not tampering)" in v.message
    again = AuditLog(folder)  # a restart cuts the torn line and says so, in the chain
    after = verify(folder)
    assert after.ok and not after.torn_tail and after.head == again.head
    assert json.loads(seg.read_bytes().splitlines()[-1])["kind"] == "recovered"


def test_rotation_keeps_the_chain_verifiable_across_files(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    log = AuditLog(folder, segment_bytes=4096, max_bytes=20_000)
    for i in range(300):
        log.append("event", {"identity_id": f"person-{i}", "score": 0.61})
    files = sorted(folder.glob("audit-*.jsonl"))
    assert len(files) >= 3 and sum(f.stat().st_size for f in files) <= 20_000 + 2 * 4096
    assert files[0].name != "audit-000001.jsonl"  # the oldest rotated out
    v = verify(folder, head=log.head.hash)
    assert v.ok and v.first_seq > 1 and v.head.records == 300 and "earlier ones rotated out" in v.message
    # Tampering in an older file is still caught.
    lines = files[1].read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"0.61", b"0.91")
    files[1].write_bytes(b"".join(lines))
    assert not verify(folder).ok


def test_a_full_disk_refuses_the_record_and_leaves_no_partial_line(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    log = filled(folder, n=3)
    before = log.head
    # The next segment is /dev/full: the kernel answers every write with ENOSPC.
    (folder / "audit-000002.jsonl").symlink_to("/dev/full")
    with pytest.raises(EdgeError, match=r"record not written: No space left on device"):
        log.append("event", {"identity_id": "x"})
    assert log.head == before and log.failures == 1 and "No space" in str(log.last_error)
    (folder / "audit-000002.jsonl").unlink()
    log.append("event", {"identity_id": "y"})  # space again: the chain goes on from the last record
    assert verify(folder).ok and log.head.records == before.records + 1


def test_records_hold_ids_and_scores_never_images_or_embeddings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.delivery.events import Evidence, MatchEvent
    from edge.delivery.sinks import AuditSink

    log = AuditLog(tmp_path / "audit")
    event = MatchEvent(
        device_id="d", identity_id="alice", label="Alice", score=0.8, threshold=0.55, est_false_match_rate=1e-6,
        evidence=Evidence(agreed=3, seen=4), track_id=7, bbox=(0.1, 0.1, 0.2, 0.2), quality=0.9, model="m",
        gallery_version=3,
    )  # fmt: skip
    AuditSink(log).emit(event)
    assert main(["audit", "show", "--state-dir", str(tmp_path), "--json"]) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rec["kind"] == "event" and set(rec["data"]) == {
        "event_id", "identity_id", "score", "threshold", "est_false_match_rate", "gallery_version", "track_id"}  # fmt: skip
    assert main(["audit", "show", "--state-dir", str(tmp_path), "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["audit", "verify", "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert os.path.exists(tmp_path / "audit")
