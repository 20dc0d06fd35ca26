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
    expected = {
        "edited": "record 6 (audit-000001.jsonl line 6) was altered",
        "edited and re-hashed": "record 7 (audit-000001.jsonl line 7) does not follow record 6: records altered",
        "removed": "record 7 (audit-000001.jsonl line 6) does not follow record 5: records removed",
        "reordered": "record 6 (audit-000001.jsonl line 5) does not follow record 4: records reordered",
        "inserted": "record 4 (audit-000001.jsonl line 6) does not follow record 5: records reordered or inserted",
        "garbled": "record at audit-000001.jsonl line 6 is not a valid record",
    }
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
        device_id="d",
        identity_id="alice",
        label="Alice",
        score=0.8,
        threshold=0.55,
        est_false_match_rate=1e-6,
        evidence=Evidence(agreed=3, seen=4),
        track_id=7,
        bbox=(0.1, 0.1, 0.2, 0.2),
        quality=0.9,
        model="m",
        gallery_version=3,
    )
    AuditSink(log).emit(event)
    assert main(["audit", "show", "--state-dir", str(tmp_path), "--json"]) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rec["kind"] == "event" and set(rec["data"]) == {
        "event_id",
        "identity_id",
        "score",
        "threshold",
        "est_false_match_rate",
        "gallery_version",
        "track_id",
    }
    assert main(["audit", "show", "--state-dir", str(tmp_path), "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["audit", "verify", "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert os.path.exists(tmp_path / "audit")


# -- each rule of the log at its boundary (what mutation testing found unpinned) -----------------


def records(folder: Path) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for seg in sorted(folder.glob("audit-*.jsonl"))
        for line in seg.read_bytes().splitlines()
        if line
    ]


def test_each_record_links_to_the_one_before_and_hashes_its_canonical_content(tmp_path: Path) -> None:
    from datetime import datetime

    from edge.delivery.audit import GENESIS, _digest

    folder = tmp_path / "audit"
    log = AuditLog(folder)
    assert log.head.records == 0 and log.head.hash == GENESIS == "0" * 64
    first = log.append("start", {"b": 2, "a": 1})
    second = log.append("event", {"identity_id": "x"})
    one, two = records(folder)
    assert (one["seq"], two["seq"]) == (1, 2) and (first.records, second.records) == (1, 2)
    assert one["prev"] == GENESIS and two["prev"] == one["hash"] == first.hash and two["hash"] == second.hash
    body = json.dumps(
        {"seq": 1, "ts": one["ts"], "kind": "start", "data": {"a": 1, "b": 2}}, separators=(",", ":"), sort_keys=True
    )
    assert one["hash"] == _digest(GENESIS, 1, str(one["ts"]), "start", {"a": 1, "b": 2})
    import hashlib

    assert one["hash"] == hashlib.sha256((GENESIS + body).encode()).hexdigest()
    stamp = datetime.fromisoformat(str(one["ts"]))
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert len(str(one["ts"]).split(".")[1]) == len("123+00:00")  # milliseconds
    # One canonical line per record: sorted keys, no spaces, a newline.
    raw = sorted(folder.glob("audit-*.jsonl"))[0].read_bytes().splitlines(keepends=True)[0]
    assert raw == json.dumps(one, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assert oct((folder / "audit-000001.jsonl").stat().st_mode & 0o777) == oct(0o640 & ~_umask())
    # A restart goes on from the head on disk.
    again = AuditLog(folder)
    assert again.head == second and again.append("stop", {}).records == 3 and verify(folder).ok


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_restart_takes_its_head_from_the_last_whole_record_even_past_corrupt_lines_or_files(tmp_path: Path) -> None:
    from edge.delivery.audit import GENESIS

    folder = tmp_path / "audit"
    log = filled(folder, n=4)
    seg = folder / "audit-000001.jsonl"
    seg.write_bytes(seg.read_bytes() + b"not json\n")  # a corrupt whole line: the head is the record before it
    assert AuditLog(folder).head == log.head
    (folder / "audit-000002.jsonl").write_bytes(b"garbage\n{}\n")  # a newest file with no record in it
    assert AuditLog(folder).head == log.head
    (folder / "audit-000003.jsonl").write_bytes(b"")
    assert AuditLog(folder).head == log.head
    (folder / "audit-notes.jsonl").write_bytes(b'{"seq": 99, "hash": "f"}\n')  # not a segment: ignored
    assert AuditLog(folder).head == log.head
    other = tmp_path / "only-garbage"
    other.mkdir()
    (other / "audit-000001.jsonl").write_bytes(b"x\n")
    assert AuditLog(other).head.records == 0 and AuditLog(other).head.hash == GENESIS


def test_a_torn_tail_is_cut_to_the_last_whole_record_and_the_cut_is_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    log = filled(folder, n=4)
    seg = folder / "audit-000001.jsonl"
    whole = seg.read_bytes()
    seg.write_bytes(whole + b'{"seq": 5, "ts"')
    again = AuditLog(folder)
    data = seg.read_bytes()
    assert data.startswith(whole) and data.count(b"\n") == 5  # the four records and the recovery, nothing torn
    last = records(folder)[-1]
    assert last["kind"] == "recovered" and last["data"] == {"file": "audit-000001.jsonl", "torn_bytes": 15}
    assert last["seq"] == 5 and last["prev"] == log.head.hash and again.head.records == 5
    assert verify(folder).ok and not verify(folder).torn_tail


def test_a_segment_rotates_only_when_the_next_record_would_pass_its_size(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    probe = AuditLog(tmp_path / "probe")
    probe.append("event", {"n": 1})
    size = (tmp_path / "probe" / "audit-000001.jsonl").stat().st_size  # one record's length (seq 1 .. 9 alike)
    log = AuditLog(folder, segment_bytes=2 * size)
    log.append("event", {"n": 1})
    log.append("event", {"n": 2})  # exactly fills the segment: stays
    assert [p.name for p in sorted(folder.glob("audit-*"))] == ["audit-000001.jsonl"]
    log.append("event", {"n": 3})  # one byte over: a new segment
    assert [p.name for p in sorted(folder.glob("audit-*"))] == ["audit-000001.jsonl", "audit-000002.jsonl"]
    tiny = AuditLog(tmp_path / "tiny", segment_bytes=10)  # a record larger than a segment still goes in one
    tiny.append("event", {"n": 1})
    tiny.append("event", {"n": 2})
    assert len(list((tmp_path / "tiny").glob("audit-*"))) == 2 and verify(tmp_path / "tiny").ok


def test_old_segments_go_beyond_the_size_or_age_bound_never_the_newest_two(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    log = AuditLog(folder, segment_bytes=10, max_bytes=1 << 30, max_age_days=1.0)
    for n in range(4):
        log.append("event", {"n": n})
    names = [p.name for p in sorted(folder.glob("audit-*"))]
    assert len(names) == 4  # within both bounds: everything kept
    old = folder / names[0]
    os.utime(old, (old.stat().st_atime, old.stat().st_mtime - 86400 - 60))  # just over a day old
    log.append("event", {"n": 4})
    assert not old.exists() and (folder / names[1]).exists()
    young = folder / names[1]
    os.utime(young, (young.stat().st_atime, young.stat().st_mtime - 86400 + 60))  # just under a day
    log.append("event", {"n": 5})
    assert young.exists()
    before = {p.name for p in folder.glob("audit-*")}
    total = sum(p.stat().st_size for p in folder.glob("audit-*"))
    small = AuditLog(folder, segment_bytes=10, max_bytes=total)  # at the bound exactly: nothing goes
    small.append("event", {"n": 6})
    assert before < {p.name for p in folder.glob("audit-*")}
    tight = AuditLog(folder, segment_bytes=10, max_bytes=1)  # far over: all but the newest two (and the new one)
    tight.append("event", {"n": 7})
    assert len(list(folder.glob("audit-*"))) == 2 and verify(folder).ok and verify(folder).first_seq == 7


def test_an_audit_folder_that_cannot_be_made_or_written_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeError, match=r"^audit log folder .*file/audit cannot be created: Not a directory$"):
        AuditLog(tmp_path / "file" / "audit")
    folder = tmp_path / "audit"
    log = filled(folder, n=2)
    (folder / "audit-000001.jsonl").unlink()
    (folder / "audit-000001.jsonl").mkdir()  # the segment cannot be opened
    with pytest.raises(EdgeError, match=r"^audit log .*audit-000001.jsonl cannot be opened: Is a directory$"):
        log.append("event", {})
    assert log.failures == 1 and str(log.last_error).endswith("cannot be opened: Is a directory")
    (folder / "audit-000001.jsonl").rmdir()
    log.append("event", {})
    assert log.last_error is None and log.failures == 1


def test_verify_counts_names_and_links_exactly(tmp_path: Path) -> None:
    from edge.errors import InputError

    folder = tmp_path / "audit"
    with pytest.raises(InputError, match="^no audit log under"):
        verify(folder)
    folder.mkdir()
    with pytest.raises(InputError, match="^no audit log under"):
        verify(folder)
    log = filled(folder, n=3)
    seg, lines = lines_of(folder)
    seg.write_bytes(b"\n".join(line.rstrip(b"\n") for line in lines) + b"\n\n")  # an empty line is not a record
    v = verify(folder, head=records(folder)[1]["hash"])  # type: ignore[arg-type]
    assert v.ok and v.records == 3 and v.first_seq == 1 and v.head == log.head and not v.torn_tail
    # A garbled record that is not the last: tampering, even when the last line is the garbled one's neighbour.
    lines[1] = b'{"seq": 2\n'
    seg.write_bytes(b"".join(lines))
    bad = verify(folder)
    assert not bad.ok and not bad.torn_tail and bad.records == 1 and bad.head.records == 1
    assert bad.message == "record at audit-000001.jsonl line 2 is not a valid record: b'{\"seq\": 2'"
    # A torn last record that ends in "}" cannot be told from tampering: it is not called torn.
    _, lines = lines_of(folder)
    seg.write_bytes(b"".join(lines[:2]).replace(b'{"seq": 2\n', b"") + b'{"seq": 3}')
    assert not verify(folder).ok
    # The first kept record starts the chain wherever its seq is; a gap after it is named with both links.
    fresh = tmp_path / "fresh"
    log = filled(fresh, n=6)
    seg, lines = lines_of(fresh)
    seg.write_bytes(b"".join(lines[2:]))
    v = verify(fresh)
    assert v.ok and v.first_seq == 3 and v.records == 4 and "(from record 3: earlier ones rotated out)" in v.message
    seg.write_bytes(b"".join(lines[2:3] + lines[4:]))
    r3, r5 = json.loads(lines[2]), json.loads(lines[4])
    assert verify(fresh).message == (
        f"record 5 (audit-000001.jsonl line 2) does not follow record 3: records removed "
        f"(expected seq 4 linked to {r3['hash'][:12]}…, found seq 5 linked to {r5['prev'][:12]}…)"
    )


def test_records_since_keeps_records_from_the_moment_on_and_skips_unreadable_lines(tmp_path: Path) -> None:
    from datetime import datetime, timedelta

    from edge.delivery.audit import records_since

    folder = tmp_path / "audit"
    filled(folder, n=3)
    seg, lines = lines_of(folder)
    base = datetime.fromisoformat("2026-01-01T00:00:00.000+00:00")
    stamped = []
    for i, line in enumerate(lines):  # records_since reads, it does not verify: give them known times
        rec = json.loads(line)
        rec["ts"] = (base + timedelta(seconds=i)).isoformat(timespec="milliseconds")
        stamped.append(json.dumps(rec).encode() + b"\n")
    seg.write_bytes(b"".join(stamped) + b"not json\n\n")
    assert [r["seq"] for r in records_since(folder)] == [1, 2, 3]
    assert [r["seq"] for r in records_since(folder, base + timedelta(seconds=1))] == [2, 3]  # at the moment: kept
    assert [r["seq"] for r in records_since(folder, base + timedelta(seconds=1, milliseconds=1))] == [3]


def test_the_logs_bounds_and_nested_folder_by_default(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a" / "b" / "audit")  # made with its parents
    assert (log.segment_bytes, log.max_bytes, log.max_age_s) == (1 << 20, 64 << 20, 365 * 86400.0)
    assert log.health().problem is None and log.last_error is None and log.failures == 0


def test_a_short_write_is_undone_and_each_failure_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "audit"
    log = filled(folder, n=2)
    before = (folder / "audit-000001.jsonl").read_bytes()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))  # the disk took 10 bytes
    for _ in range(2):
        with pytest.raises(EdgeError, match=r"audit-000001\.jsonl: record not written: short write$"):
            log.append("event", {"identity_id": "x"})
    monkeypatch.undo()
    assert log.failures == 2 and (folder / "audit-000001.jsonl").read_bytes() == before  # undone, both times
    assert verify(folder).ok


def test_a_restart_finds_the_head_in_the_last_segment_holding_a_record(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    log = AuditLog(folder, segment_bytes=10)  # a segment per record
    log.append("start", {"reason": "a reason with spaces"})
    log.append("event", {"reason": "another reason with spaces"})
    (folder / "audit-000003.jsonl").write_bytes(b"garbage\n")
    assert AuditLog(folder).head == log.head  # the second segment's record, spaces and all


def test_an_empty_segment_takes_the_next_record_and_a_one_byte_one_is_full(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    folder.mkdir()
    (folder / "audit-000001.jsonl").write_bytes(b"")
    log = AuditLog(folder, segment_bytes=10)
    log.append("start", {})  # larger than a segment, but the segment is empty: it goes there
    assert [p.name for p in sorted(folder.glob("audit-*"))] == ["audit-000001.jsonl"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "audit-000001.jsonl").write_bytes(b"\n")
    AuditLog(other, segment_bytes=10).append("start", {})
    assert [p.name for p in sorted(other.glob("audit-*"))] == ["audit-000001.jsonl", "audit-000002.jsonl"]


def test_pruning_stops_as_soon_as_the_rest_fits_and_says_what_went(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "audit"
    log = AuditLog(folder, segment_bytes=10)
    for n in range(5):
        log.append("event", {"n": n})
    sizes = {p.stat().st_size for p in folder.glob("audit-*")}
    assert len(sizes) == 1  # five segments of one record each, the same size
    (size,) = sizes
    import logging

    with caplog.at_level(logging.INFO, logger="edge.delivery.audit"):
        AuditLog(folder, segment_bytes=10, max_bytes=4 * size - 1, max_age_days=2.0).append("event", {"n": 5})
    assert [p.name for p in sorted(folder.glob("audit-*"))] == [f"audit-00000{i}.jsonl" for i in (3, 4, 5, 6)]
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"audit log: audit-00000{i}.jsonl rotated out (bounds: {4 * size - 1} bytes, 2 days)" for i in (1, 2)
    ]


def test_a_torn_tail_is_said_naming_its_file_and_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    folder = tmp_path / "audit"
    filled(folder, n=2)
    seg = folder / "audit-000001.jsonl"
    seg.write_bytes(seg.read_bytes() + b'{"seq": 3')
    with caplog.at_level(logging.WARNING, logger="edge.delivery.audit"):
        AuditLog(folder)
    assert [r.getMessage() for r in caplog.records] == [
        f"audit log {seg}: a record cut by a crash (9 bytes) was removed"
    ]


def test_every_refusal_of_verify_says_how_far_the_chain_held(tmp_path: Path) -> None:
    from edge.delivery.audit import GENESIS, Head

    folder = tmp_path / "audit"
    filled(folder, n=6)
    seg, lines = lines_of(folder)
    recs = [json.loads(x) for x in lines]
    held = Head(3, recs[2]["hash"])
    cases = {
        "altered": [*lines[:3], lines[3].replace(b'"score":0.7', b'"score":0.9'), *lines[4:]],
        "gap": lines[:3] + lines[4:],
        "list": [*lines[:3], b"[1]\n", *lines[4:]],  # JSON, not a record: refused, never an exception
    }
    for name, body in cases.items():
        seg.write_bytes(b"".join(body))
        v = verify(folder)
        assert (v.ok, v.records, v.first_seq, v.head) == (False, 3, 1, held), name
    seg.write_bytes(b"".join(lines))
    v = verify(folder, head="f" * 64)
    assert (v.ok, v.records, v.first_seq, v.head.records) == (False, 6, 1, 6)
    assert v.message == f"head {'f' * 16}… is not in the chain: the log was cut or rewritten after it was recorded"
    long = b'{"not": "a record", "padding": "' + b"x" * 200 + b'"}\n'
    seg.write_bytes(b"".join(lines[:2]) + long + b"".join(lines[2:]))
    assert verify(folder).message == f"record at audit-000001.jsonl line 3 is not a valid record: {long[:80]!r}"
    seg.write_bytes(b"".join(lines[1:]))  # from record 2: earlier ones rotated out
    assert "(from record 2: earlier ones rotated out)" in verify(folder).message
    seg.write_bytes(b"".join(lines) + b'{"seq": 7, "ts"\n\n')  # a torn last record, then only empty lines
    torn = verify(folder)
    assert torn.ok and torn.torn_tail and torn.message.endswith("; the last record was cut by a crash (not tampering)")
    seg.write_bytes(b"")  # a segment with no record: nothing to refuse
    empty = verify(folder)
    assert (empty.ok, empty.records, empty.first_seq, empty.head) == (True, 0, 0, Head(0, GENESIS))


def test_records_since_reads_past_an_empty_or_unreadable_line_in_the_middle(tmp_path: Path) -> None:
    from edge.delivery.audit import records_since

    folder = tmp_path / "audit"
    filled(folder, n=3)
    seg, lines = lines_of(folder)
    seg.write_bytes(lines[0] + b"\n" + b"not json\n" + b"".join(lines[1:]))
    assert [r["seq"] for r in records_since(folder)] == [1, 2, 3]
