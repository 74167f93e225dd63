"""Namespace changes on lazyfs (create, unlink, rename, mkdir, rmdir) are
durable only once their directory is fsynced; before a power cut the mount
shows them all."""

from __future__ import annotations

import os

import pytest

from unbundled.testing.lazyfs import LazyFS

from .conftest import MakeLazyFS
from .test_lazyfs import put, reboot, sync_dir


def names(fs: LazyFS, sub: str = "") -> list[str]:
    return sorted(os.listdir(fs.mount / sub))


def test_a_created_file_is_gone_unless_its_directory_was_synced(lazyfs: LazyFS) -> None:
    """Even with its data fsynced: the data is kept only as long as the power
    unless the entry is durable."""
    put(lazyfs.mount / "synced", b"data", sync="fsync")
    put(lazyfs.mount / "plain", b"data")
    assert names(lazyfs) == ["plain", "synced"]
    assert (lazyfs.mount / "synced").read_bytes() == b"data"
    assert os.listdir(lazyfs.backing) == []
    report = lazyfs.power_cut()
    assert (report.namespace_dropped, report.namespace_applied) == (2, ())
    lazyfs.remount()
    assert names(lazyfs) == []


def test_after_fsyncdir_a_created_file_stays(lazyfs: LazyFS) -> None:
    put(lazyfs.mount / "a", b"synced first", sync="fsync")
    put(lazyfs.mount / "b", b"never synced")
    sync_dir(lazyfs.mount)
    assert (lazyfs.backing / "a").read_bytes() == b"synced first"
    reboot(lazyfs)
    assert names(lazyfs) == ["a", "b"]
    assert (lazyfs.mount / "a").read_bytes() == b"synced first"
    assert (lazyfs.mount / "b").read_bytes() == b""  # the entry, not the data


def test_data_synced_after_fsyncdir_reaches_the_file(lazyfs: LazyFS) -> None:
    put(lazyfs.mount / "a", b"first")
    sync_dir(lazyfs.mount)
    put(lazyfs.mount / "a", b"FIRST", sync="fdatasync")
    reboot(lazyfs)
    assert (lazyfs.mount / "a").read_bytes() == b"FIRST"


def test_an_unlink_without_fsyncdir_is_undone(lazyfs: LazyFS) -> None:
    put(lazyfs.mount / "a", b"kept", sync="fsync")
    put(lazyfs.mount / "b", b"gone", sync="fsync")
    sync_dir(lazyfs.mount)
    os.unlink(lazyfs.mount / "a")
    os.unlink(lazyfs.mount / "b")
    assert names(lazyfs) == []
    assert not (lazyfs.mount / "a").exists()
    with pytest.raises(FileNotFoundError):
        (lazyfs.mount / "a").read_bytes()
    assert lazyfs.unsynced_namespace() == [("unlink", "/a"), ("unlink", "/b")]
    reboot(lazyfs)
    assert names(lazyfs) == ["a", "b"]
    assert (lazyfs.mount / "a").read_bytes() == b"kept"
    os.unlink(lazyfs.mount / "b")
    sync_dir(lazyfs.mount)
    reboot(lazyfs)
    assert names(lazyfs) == ["a"]


def test_a_rename_without_fsyncdir_is_undone(lazyfs: LazyFS) -> None:
    put(lazyfs.mount / "old", b"old", sync="fsync")
    put(lazyfs.mount / "tmp", b"new", sync="fsync")
    sync_dir(lazyfs.mount)
    os.rename(lazyfs.mount / "tmp", lazyfs.mount / "old")  # the atomic-replace idiom
    assert names(lazyfs) == ["old"]
    assert (lazyfs.mount / "old").read_bytes() == b"new"
    reboot(lazyfs)
    assert names(lazyfs) == ["old", "tmp"]
    assert (lazyfs.mount / "old").read_bytes() == b"old"
    os.rename(lazyfs.mount / "tmp", lazyfs.mount / "old")
    sync_dir(lazyfs.mount)
    reboot(lazyfs)
    assert names(lazyfs) == ["old"]
    assert (lazyfs.mount / "old").read_bytes() == b"new"


def test_a_rename_across_directories_is_durable_with_either_directory(
    make_lazyfs: MakeLazyFS,
) -> None:
    for i, synced in enumerate(["src", "dst"]):
        fs = make_lazyfs(f"fs{i}")
        (fs.mount / "src").mkdir()
        (fs.mount / "dst").mkdir()
        put(fs.mount / "src" / "f", b"moved", sync="fsync")
        sync_dir(fs.mount / "src")
        sync_dir(fs.mount)
        os.rename(fs.mount / "src" / "f", fs.mount / "dst" / "f")
        sync_dir(fs.mount / synced)
        reboot(fs)
        assert (names(fs, "src"), names(fs, "dst")) == ([], ["f"])
        assert (fs.mount / "dst" / "f").read_bytes() == b"moved"


def test_mkdir_and_rmdir_without_fsyncdir_are_undone(lazyfs: LazyFS) -> None:
    (lazyfs.mount / "kept").mkdir()
    sync_dir(lazyfs.mount)
    (lazyfs.mount / "new").mkdir()
    put(lazyfs.mount / "new" / "f", b"x", sync="fsync")
    (lazyfs.mount / "kept").rmdir()
    assert names(lazyfs) == ["new"]
    assert names(lazyfs, "new") == ["f"]
    assert (lazyfs.mount / "new").is_dir()
    reboot(lazyfs)
    assert names(lazyfs) == ["kept"]


def test_fsyncdir_makes_every_earlier_change_durable(lazyfs: LazyFS) -> None:
    """Changes are one ordered journal: fsyncdir of a directory applies every
    pending change up to its own last one, so a new directory's entry comes
    with its files."""
    (lazyfs.mount / "d").mkdir()
    put(lazyfs.mount / "d" / "f", b"inside", sync="fsync")
    put(lazyfs.mount / "later", b"")
    sync_dir(lazyfs.mount / "d")
    assert lazyfs.unsynced_namespace() == [("create", "/later")]
    reboot(lazyfs)
    assert names(lazyfs) == ["d"]
    assert (lazyfs.mount / "d" / "f").read_bytes() == b"inside"


def test_an_unlinked_open_file_keeps_working(lazyfs: LazyFS) -> None:
    put(lazyfs.mount / "a", b"one", sync="fsync")
    sync_dir(lazyfs.mount)
    with open(lazyfs.mount / "a", "r+b") as f:
        os.unlink(lazyfs.mount / "a")
        sync_dir(lazyfs.mount)
        f.seek(0)
        f.write(b"two")
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        assert f.read() == b"two"
    reboot(lazyfs)
    assert names(lazyfs) == []


def test_namespace_errors_follow_posix(lazyfs: LazyFS) -> None:
    (lazyfs.mount / "d").mkdir()
    put(lazyfs.mount / "d" / "f", b"")
    with pytest.raises(FileExistsError):
        (lazyfs.mount / "d").mkdir()
    with pytest.raises(OSError, match="not empty"):
        (lazyfs.mount / "d").rmdir()
    with pytest.raises(FileNotFoundError):
        put(lazyfs.mount / "nowhere" / "f", b"")
    with pytest.raises(IsADirectoryError):
        os.unlink(lazyfs.mount / "d")
    with pytest.raises(NotADirectoryError):
        (lazyfs.mount / "d" / "f").rmdir()


def test_a_reordering_cut_keeps_a_prefix_of_the_changes(make_lazyfs: MakeLazyFS) -> None:
    kept = set()
    for seed in range(6):
        fs = make_lazyfs(f"s{seed}", seed=seed)
        for i in range(6):
            put(fs.mount / f"f{i}", b"")
        report = fs.power_cut(reorder=True)
        n = len(report.namespace_applied)
        assert report.namespace_applied == tuple(("create", f"/f{i}") for i in range(n))
        assert report.namespace_dropped == 6 - n
        assert sorted(os.listdir(fs.backing)) == [f"f{i}" for i in range(n)]
        kept.add(n)
    assert len(kept) > 1, "the seed chooses the prefix"
