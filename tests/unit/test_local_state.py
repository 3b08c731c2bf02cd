"""The clean-shutdown rule for local table stores (``streams.local_state``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.local_state import CLEAN_MARKER, DataDirInUse, mark_clean_shutdown, open_table_dir


def _stores(path: Path) -> None:
    (path / "budget-0.db").mkdir(parents=True)
    (path / "budget-0.db" / "000001.sst").write_bytes(b"rows")
    (path / "frequency-1.db").mkdir()
    (path / "LOCK").write_text("")


def test_a_store_left_by_a_crash_is_discarded(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables"
    _stores(tables)
    assert open_table_dir(tables) is True
    assert tables.is_dir()
    assert list(tables.iterdir()) == []


def test_a_store_left_by_a_clean_shutdown_is_kept_and_the_marker_consumed(tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    _stores(tables)
    mark_clean_shutdown(tables)
    assert (tables / CLEAN_MARKER).exists()
    assert open_table_dir(tables) is False
    assert (tables / "budget-0.db" / "000001.sst").read_bytes() == b"rows"
    # Opened means running: a crash from here on must not find the marker.
    assert not (tables / CLEAN_MARKER).exists()
    assert open_table_dir(tables) is True
    assert list(tables.iterdir()) == []


def test_a_new_data_dir_is_created_and_nothing_is_discarded(tmp_path: Path) -> None:
    tables = tmp_path / "fresh" / "tables"
    assert open_table_dir(tables) is False
    assert tables.is_dir()


def test_marking_a_missing_dir_creates_nothing(tmp_path: Path) -> None:
    mark_clean_shutdown(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_stores_held_by_a_running_worker_are_never_discarded(tmp_path: Path) -> None:
    """Two workers on one data dir: the second refuses instead of deleting live stores."""
    tables = tmp_path / "tables"
    _stores(tables)
    lock = tables / "budget-0.db" / "LOCK"
    lock.write_text("")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(DataDirInUse, match=r"budget-0\.db"):
            open_table_dir(tables)
        assert (tables / "budget-0.db" / "000001.sst").exists()
    finally:
        holder.kill()
        holder.wait()
    # Once that process is gone the lock is free and the usual rule applies.
    assert open_table_dir(tables) is True
