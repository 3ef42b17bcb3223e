from __future__ import annotations

from pathlib import Path

import pytest

from segpipe.io.atomic import atomic_path, remove_stale_temporaries, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    target = write_text(tmp_path / "report.csv", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_the_temporary_keeps_the_whole_suffix_and_replaces_the_target(tmp_path: Path):
    target = tmp_path / "sub" / "case.nii.gz"
    with atomic_path(target, fsync=True) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".case.nii.gz.") and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"volume")
    assert target.read_bytes() == b"volume" and sorted(p.name for p in target.parent.iterdir()) == ["case.nii.gz"]


def test_stale_temporaries_of_one_target_are_removed(tmp_path: Path):
    target = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.123-abcd.tmp.ckpt"
    other = tmp_path / ".best.ckpt.123-abcd.tmp.ckpt"
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    remove_stale_temporaries(target)
    assert not stale.exists() and other.exists()
