"""The lazyfs test filesystem forgets exactly what was not synced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unbundled import UsageError
from unbundled.testing.lazyfs import LazyFS

from .conftest import MakeLazyFS

SECTOR = 512


def put(path: Path, data: bytes, offset: int = 0, *, sync: str | None = None) -> None:
    """Write ``data`` at ``offset`` (creating the file), then ``sync`` it with
    ``"fsync"``, ``"fdatasync"`` or not at all."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync == "fsync":
            os.fsync(fd)
        elif sync == "fdatasync":
            os.fdatasync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    """fsync the directory ``path`` (FUSE's ``fsyncdir``)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reboot(fs: LazyFS, **cut: bool) -> None:
    fs.power_cut(**cut)
    assert not os.path.ismount(fs.mount)
    fs.remount()


@pytest.mark.parametrize("sync", ["fsync", "fdatasync"])
def test_synced_data_survives_a_power_cut(lazyfs: LazyFS, sync: str) -> None:
    put(lazyfs.mount / "a", b"durable" * 100, sync=sync)
    assert lazyfs.unsynced() == {}
    assert lazyfs.unsynced_namespace() == [("create", "/a")]
    sync_dir(lazyfs.mount)
    assert lazyfs.unsynced_namespace() == []
    reboot(lazyfs)
    assert (lazyfs.mount / "a").read_bytes() == b"durable" * 100
    assert (lazyfs.backing / "a").read_bytes() == b"durable" * 100


def test_unsynced_data_is_gone(lazyfs: LazyFS) -> None:
    put(lazyfs.mount / "old", b"before", sync="fsync")
    sync_dir(lazyfs.mount)
    put(lazyfs.mount / "old", b"AFTER!")
    put(lazyfs.mount / "new", b"never synced")
    # The writer sees its writes; the disk does not have them yet.
    assert (lazyfs.mount / "old").read_bytes() == b"AFTER!"
    assert (lazyfs.mount / "new").read_bytes() == b"never synced"
    assert (lazyfs.backing / "old").read_bytes() == b"before"
    assert lazyfs.unsynced() == {"/new": 1, "/old": 1}
    report = lazyfs.power_cut()
    assert (report.dropped, report.applied) == (2, ())
    assert (report.namespace_dropped, report.namespace_applied) == (1, ())
    lazyfs.remount()
    assert (lazyfs.mount / "old").read_bytes() == b"before"
    assert not (lazyfs.mount / "new").exists()


def test_close_does_not_sync(lazyfs: LazyFS) -> None:
    with open(lazyfs.mount / "f", "wb") as f:
        f.write(b"closed, flushed, not synced")
        f.flush()
    sync_dir(lazyfs.mount)
    reboot(lazyfs)
    assert (lazyfs.mount / "f").read_bytes() == b""


def test_a_partially_synced_file_keeps_exactly_the_synced_part(lazyfs: LazyFS) -> None:
    path = lazyfs.mount / "log"
    put(path, b"A" * 1000, sync="fsync")
    sync_dir(lazyfs.mount)
    put(path, b"B" * 1000, 1000, sync="fdatasync")
    put(path, b"C" * 1000, 2000)
    put(path, b"x", 10)  # an unsynced overwrite inside the synced part
    assert path.read_bytes() == b"A" * 10 + b"x" + b"A" * 989 + b"B" * 1000 + b"C" * 1000
    reboot(lazyfs)
    assert path.read_bytes() == b"A" * 1000 + b"B" * 1000


def test_an_unsynced_truncate_is_undone(lazyfs: LazyFS) -> None:
    path = lazyfs.mount / "t"
    put(path, b"keep" * 1024, sync="fsync")
    sync_dir(lazyfs.mount)
    os.truncate(path, 10)
    assert path.stat().st_size == 10
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(b"grown back" * 2000)
    reboot(lazyfs)
    assert path.read_bytes() == b"keep" * 1024


def test_a_synced_truncate_stays(lazyfs: LazyFS) -> None:
    path = lazyfs.mount / "t"
    put(path, b"keep" * 1024, sync="fsync")
    sync_dir(lazyfs.mount)
    with open(path, "r+b") as f:
        f.truncate(10)
        os.fsync(f.fileno())
    reboot(lazyfs)
    assert path.read_bytes() == b"keep" * 2 + b"ke"


def test_a_renamed_file_keeps_its_unsynced_writes_until_synced(lazyfs: LazyFS) -> None:
    put(lazyfs.mount / "tmp", b"payload")
    os.rename(lazyfs.mount / "tmp", lazyfs.mount / "final")
    assert (lazyfs.mount / "final").read_bytes() == b"payload"
    fd = os.open(lazyfs.mount / "final", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    sync_dir(lazyfs.mount)
    reboot(lazyfs)
    assert (lazyfs.mount / "final").read_bytes() == b"payload"


def test_after_a_power_cut_the_handle_refuses_until_remounted(lazyfs: LazyFS) -> None:
    lazyfs.power_cut()
    with pytest.raises(UsageError):
        lazyfs.power_cut()
    with pytest.raises(UsageError):
        lazyfs.unsynced()
    lazyfs.remount()
    with pytest.raises(UsageError):
        lazyfs.start()


def torn(
    make_lazyfs: MakeLazyFS, name: str, seed: int
) -> tuple[bytes, tuple[tuple[str, str, int, int], ...]]:
    """Synced ``o`` bytes, an unsynced write of ``n`` bytes at an unaligned
    offset, a torn power cut: the bytes on disk and what the cut applied."""
    fs = make_lazyfs(name, seed=seed)
    put(fs.mount / "f", b"o" * 8192, sync="fsync")
    sync_dir(fs.mount)
    put(fs.mount / "f", b"n" * 7000, 100)
    report = fs.power_cut(tear=True)
    return (fs.backing / "f").read_bytes(), report.applied


def test_tear_leaves_a_sector_aligned_prefix_of_the_last_write(make_lazyfs: MakeLazyFS) -> None:
    """The kernel may split one ``pwrite`` into several FUSE writes (at page
    boundaries); the torn one is the last the filesystem received."""
    cuts = set()
    for seed in range(6):
        data, applied = torn(make_lazyfs, f"s{seed}", seed)
        ((path, kind, offset, length),) = applied
        assert (path, kind) == ("/f", "w")
        end = offset + length
        assert 100 <= offset < end < 7100 and end % SECTOR == 0, (offset, end)
        assert data == b"o" * offset + b"n" * length + b"o" * (8192 - end)
        cuts.add(end)
    assert len(cuts) > 1, "the seed chooses the cut"


def test_tear_replays_with_the_same_seed(make_lazyfs: MakeLazyFS) -> None:
    assert torn(make_lazyfs, "one", 11) == torn(make_lazyfs, "two", 11)


def test_tear_without_a_sector_boundary_writes_nothing(lazyfs: LazyFS) -> None:
    put(lazyfs.mount / "f", b"o" * 1024, sync="fsync")
    sync_dir(lazyfs.mount)
    put(lazyfs.mount / "f", b"n" * 300, 600)  # 600..900 crosses no multiple of 512
    report = lazyfs.power_cut(tear=True)
    assert report.applied == ()
    assert (lazyfs.backing / "f").read_bytes() == b"o" * 1024


def reordered(make_lazyfs: MakeLazyFS, name: str, seed: int) -> tuple[bytes, bytes, int]:
    """Sixteen unsynced sector writes over two files, a reordering cut: both
    files' bytes and how many writes the cut applied."""
    fs = make_lazyfs(name, seed=seed)
    for file in ("a", "b"):
        put(fs.mount / file, b"." * (8 * SECTOR), sync="fsync")
        for i in range(8):
            put(fs.mount / file, bytes([65 + i]) * SECTOR, i * SECTOR)
    sync_dir(fs.mount)
    report = fs.power_cut(reorder=True)
    assert report.dropped == 16
    return (fs.backing / "a").read_bytes(), (fs.backing / "b").read_bytes(), len(report.applied)


def test_reorder_applies_a_seeded_subset_of_whole_writes(make_lazyfs: MakeLazyFS) -> None:
    sizes = set()
    for seed in range(4):
        a, b, applied = reordered(make_lazyfs, f"s{seed}", seed)
        landed = 0
        for data in (a, b):
            for i in range(8):
                sector = data[i * SECTOR : (i + 1) * SECTOR]
                assert sector in (b"." * SECTOR, bytes([65 + i]) * SECTOR)
                landed += sector != b"." * SECTOR
        assert landed == applied
        sizes.add(applied)
    assert len(sizes) > 1, "the seed chooses the subset"
    assert reordered(make_lazyfs, "again", 3) == reordered(make_lazyfs, "more", 3)
