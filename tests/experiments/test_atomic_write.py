"""moelab.atomic: the one atomic write used for every file moelab writes whole."""

import os
import stat

import pytest

from moelab.atomic import atomic_path, atomic_paths, atomic_write


def test_writes_bytes_and_text_and_replaces(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    assert atomic_write(target, "a\r\nb") == target
    assert target.read_bytes() == b"a\r\nb"  # newlines written as given
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_temporary_names_are_unique_and_mode_follows_the_umask(tmp_path):
    target = tmp_path / "f"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert target.read_bytes() == b"a"  # the outer context renames last
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_bad_data_type_is_named(tmp_path):
    with pytest.raises(TypeError, match="data must be bytes or str, got int"):
        atomic_write(tmp_path / "f", 3)
    assert list(tmp_path.iterdir()) == []


def test_files_that_belong_together_are_all_written_before_any_replaces_its_old_one(tmp_path):


    a, b = tmp_path / "a.bin", tmp_path / "b.json"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(RuntimeError), atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        raise RuntimeError("crash before b is written")
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]
    with atomic_paths(a, b) as (ta, tb):
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
