"""A table written in parts (the Ray feature build's sources): a folder behind a link that one
rename switches, read like a file, and cleaned up after a failed or killed write."""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl
import pytest

from recsys.data.snapshots import latest_rows
from recsys.io import atomic_folder, atomic_path, file_sha256, parquet_files, remove_stale_temps

ROWS = pl.DataFrame({
    "user_id": ["a", "b", "a", "c", "b"],
    "event_timestamp": pl.datetime_range(pl.datetime(2026, 1, 1), pl.datetime(2026, 1, 5), "1d", eager=True),
    "clicks": [1, 2, 3, 4, 5],
})


def write_in_parts(path: Path, df: pl.DataFrame, parts: int) -> Path:
    with atomic_folder(path) as folder:
        for j in range(parts):
            df.gather_every(parts, offset=j).write_parquet(folder / f"part-{j:05d}.parquet")
    return path


def old(*paths: Path) -> None:
    then = time.time() - 3600
    for p in paths:
        os.utime(p, (then, then), follow_symlinks=False)


def test_a_folder_of_parts_reads_as_the_table_and_is_switched_whole(tmp_path: Path) -> None:
    path = write_in_parts(tmp_path / "v.parquet", ROWS, 2)
    assert path.is_symlink() and len(parquet_files(path)) == 2
    assert pl.read_parquet(path).sort("clicks").equals(ROWS)
    first = path.resolve()

    write_in_parts(path, ROWS.head(2), 1)
    assert pl.read_parquet(path).equals(ROWS.head(2))
    assert first.is_dir(), "a reader that opened the replaced folder may still read it"
    assert remove_stale_temps(tmp_path, ["v.parquet"], time.time() + 1) == [first]
    assert pl.read_parquet(path).equals(ROWS.head(2)), "the linked folder is never removed"


def test_a_failed_write_leaves_the_previous_table_and_no_folder(tmp_path: Path) -> None:
    path = write_in_parts(tmp_path / "v.parquet", ROWS, 2)
    with pytest.raises(RuntimeError), atomic_folder(path) as folder:
        ROWS.head(1).write_parquet(folder / "part-00000.parquet")
        raise RuntimeError("a worker died")
    assert pl.read_parquet(path).sort("clicks").equals(ROWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["v.parquet", path.readlink().name])


def test_what_a_killed_write_left_is_removed_by_the_next_run_only(tmp_path: Path) -> None:
    path = write_in_parts(tmp_path / "v.parquet", ROWS, 2)
    killed = tmp_path / ".v.parquet.k1ll3d00.parts"  # parts written, never switched in
    killed.mkdir()
    ROWS.write_parquet(killed / "part-00000.parquet")
    link = tmp_path / ".v.parquet.k1ll3d00.link"
    link.symlink_to(killed.name)
    running = tmp_path / ".v.parquet.runn1ng0.parts"  # another run's, started after this one
    running.mkdir()
    others = tmp_path / ".w.parquet.k1ll3d00.parts"  # not a target of this cleanup
    others.mkdir()
    old(killed, link, others, path.resolve(), path)

    removed = remove_stale_temps(tmp_path, ["v.parquet"], time.time() - 60)
    assert sorted(removed) == sorted([killed, link])
    assert running.is_dir() and others.is_dir()
    assert pl.read_parquet(path).sort("clicks").equals(ROWS)


def test_a_file_and_a_folder_replace_each_other(tmp_path: Path) -> None:
    """The local build writes one file, the Ray build a folder, onto the same source."""
    path = tmp_path / "v.parquet"
    ROWS.write_parquet(path)
    write_in_parts(path, ROWS.tail(3), 3)
    assert pl.read_parquet(path).sort("clicks").equals(ROWS.tail(3))
    folder = path.resolve()
    with atomic_path(path, ".parquet") as tmp:
        ROWS.head(1).write_parquet(tmp)
    assert path.is_file() and not path.is_symlink() and pl.read_parquet(path).equals(ROWS.head(1))
    old(folder)
    assert remove_stale_temps(tmp_path, ["v.parquet"], time.time()) == [folder]


def test_a_copied_workspace_whose_link_became_a_folder_is_still_switched(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    path.mkdir()
    ROWS.write_parquet(path / "part-00000.parquet")
    write_in_parts(path, ROWS.head(2), 1)
    assert path.is_symlink() and pl.read_parquet(path).equals(ROWS.head(2))


def test_latest_rows_and_the_content_hash_of_a_folder(tmp_path: Path) -> None:
    file = tmp_path / "f.parquet"
    ROWS.write_parquet(file)
    folder = write_in_parts(tmp_path / "d.parquet", ROWS, 2)
    for end in (None, ROWS["event_timestamp"][2]):
        a, b = latest_rows(file, "user_id", end), latest_rows(folder, "user_id", end)
        assert a.sort("user_id").equals(b.sort("user_id")) and a.height == (3 if end is None else 2)

    again = write_in_parts(tmp_path / "e.parquet", ROWS, 2)
    assert file_sha256(folder) == file_sha256(again) != file_sha256(file)
    write_in_parts(again, ROWS.with_columns(pl.col("clicks") + 1), 2)
    assert file_sha256(folder) != file_sha256(again)
