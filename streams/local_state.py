"""When a worker may trust its local table stores (RocksDB) at start-up.

A table write lands in the local store at once and in its changelog topic a
little later. A worker killed in between (SIGKILL, OOM, power) leaves a
store that is *ahead* of the changelog: it holds writes that no other copy
has, whose source messages were never committed. Another worker then takes
the partitions over from the changelog and re-processes those messages,
while the restarted worker's store still carries the first attempt's side
keys. Faust only re-reads the changelog from the store's last persisted
offset, so those keys were never corrected: a rocksdb chaos run ended with
a campaign's ``pending_count`` at -38 (reservations released twice).

The rule is Kafka Streams' checkpoint rule: a store directory is reused
only if the worker that used it last shut down cleanly (its producer
flushed, so every local write is in the changelog) and left a marker
saying so. Otherwise its stores are discarded and rebuilt from the
changelogs, exactly as the in-memory store always is. The marker is
removed as soon as a worker opens the directory, so any exit that does not
write it again counts as unclean.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

__all__ = ["CLEAN_MARKER", "DataDirInUse", "mark_clean_shutdown", "open_table_dir"]

CLEAN_MARKER = "CLEAN_SHUTDOWN"


class DataDirInUse(RuntimeError):
    """Another running process holds a store in the directory (two workers, one data dir)."""


def _held_by_another_process(lock_file: Path) -> bool:
    # RocksDB holds an fcntl lock on <db>/LOCK while the database is open;
    # such locks belong to a process, so this probe only sees other processes.
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def open_table_dir(path: Path) -> bool:
    """Prepare ``path`` (a worker's table directory) for a new worker process.

    Guarantees: raises ``DataDirInUse`` and changes nothing if another
    running process holds one of its stores; else afterwards ``path`` exists
    and has no clean-shutdown marker;
    its previous contents are kept only if the marker was there (the last
    worker shut down cleanly), else they are deleted. Returns True if stores
    were discarded.
    """
    busy = [lock.parent.name for lock in path.glob("*/LOCK") if _held_by_another_process(lock)]
    if busy:
        # Discarding (or sharing) a live worker's stores would corrupt them.
        raise DataDirInUse(
            f"{path} is in use by another running worker ({', '.join(sorted(busy))}); "
            "give each worker its own XSP_DATA_DIR"
        )
    marker = path / CLEAN_MARKER
    clean = marker.exists()
    discarded = False
    if path.exists() and not clean:
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
            discarded = True
    path.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    return discarded


def mark_clean_shutdown(path: Path) -> None:
    """Record that every write of the stores in ``path`` reached its changelog.

    Call only after the worker's consumer stopped and its producer was flushed.
    """
    if path.exists():
        (path / CLEAN_MARKER).write_text("the last worker flushed every table write\n")
