"""Large buffers through shared memory: arenas that their owner writes and peers map.

::

    owner (writes)                                   peer (reads)
    ──────────────                                   ────────────
    Arena.put(buffer)                                Mapper.attach(segment names in the message)
      first fit in a segment's free list,              map each new segment once (cached)
      else a new segment (/dev/shm/<prefix>-N)       Mapper.block(segment, offset, size)
      copy in: pwrite where the pages are new,         a zero-copy, writable view; when the last
      memcpy into its own mapping where warm           user of it is gone, on_release(segment,
    handle (segment, offset, size) in the message      offset) tells the owner (batched in the
                                         ──────────►   next message the peer sends)
    Arena.free(segment, offset)          ◄──────────

Segments are reused, so after the first call their pages are warm in both processes and a large
array moves at memory speed: one copy into the arena on the sending side, none on the receiving
side.

When the receiver keeps what it got (``results.append(call(array))``), no block comes back and
the next value needs new pages, which the kernel must allocate and map first: on a virtual
machine that costs about twice the copy itself. So a put of at least ``SPARE_MIN`` bytes that
found too little warm room asks the arena's thread for a *spare*: a segment of that size whose
pages are allocated (``posix_fallocate``: ENOSPC, never SIGBUS, when the folder is full) and
mapped in the owner (``MADV_POPULATE_WRITE``), made while the value travels and the peer works,
until there is warm room for one more value of that size (``SPARES_AHEAD``). A put takes a warm
block first, and waits for a spare being made rather than race it for new pages. One spare is
made at a time, never larger than a quarter of the folder's free space; a spare is a segment
like any other, so an arena holds at most one value's room beyond what its peers hold. A spare
is visible to :meth:`Arena.put` only once complete, and a block is lent to one value at a time:
its pages are reused only after the receiver gave it back.

A segment's name starts with its owner's prefix, ``envrunner-<caller pid>-<owner pid>``
(a caller's own arenas, one per runner, add ``.<n>`` to it):

- the owner unlinks its segments when it closes;
- the broker unlinks a dead worker's segments (``envrunner-<caller pid>-<worker pid>-*``);
- the next runner unlinks the segments of callers that are no longer running.

The mappings outlive the files: a peer's views stay valid after the owner is gone.

The folder is ``/dev/shm``, or ``$ENVRUNNER_SHM_DIR`` (a tmpfs of its own; the caller and its
workers must see the same one). When it is full, :meth:`Arena.put` raises ``OSError`` (ENOSPC)
and gives the block back; the encoder then sends the value in frames. Pages are only ever
written through the mapping once a ``pwrite`` has allocated them, so a full tmpfs is an error,
never a SIGBUS.

This module is part of the sealed worker runtime (standard library; numpy if present).
"""

from __future__ import annotations

import itertools
import mmap
import os
import sys
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["SHM_DIR", "Arena", "Mapper", "available", "folder", "remove_stale", "unlink_owned"]

SHM_DIR = "/dev/shm"
ALIGN = 64
MIN_SEGMENT = 16 * 1024 * 1024
#: ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14): allocate and map pages without touching them.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
#: Pages are mapped in steps of this many bytes (``madvise`` holds the GIL while it runs).
POPULATE_STEP = 4 * 1024 * 1024
#: Warm room kept ahead, in values of the size of the last put that found too little.
SPARES_AHEAD = 1
#: Smaller values never ask for a spare: their new pages cost little, and a spare would not.
SPARE_MIN = 4 * 1024 * 1024
#: A put waits at most this long for a spare being made before it takes new pages itself.
SPARE_WAIT = 2.0


def folder() -> str:
    """The shared-memory folder: ``$ENVRUNNER_SHM_DIR``, else ``/dev/shm``."""
    return os.environ.get("ENVRUNNER_SHM_DIR") or SHM_DIR


def available() -> bool:
    """Whether this machine has a shared-memory folder to put segments in."""
    where = folder()
    return os.path.isdir(where) and os.access(where, os.W_OK)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _copy(mapping: mmap.mmap, offset: int, view: memoryview) -> None:
    """``mapping[offset:...] = view``, through numpy when loaded: it lets go of the GIL while
    it copies, so that the process's other threads (the spares thread, a caller's broker) run."""
    np = sys.modules.get("numpy")
    if np is None or view.nbytes < POPULATE_STEP:
        mapping[offset : offset + view.nbytes] = view
        return
    target = np.frombuffer(mapping, dtype=np.uint8, count=view.nbytes, offset=offset)
    np.copyto(target, np.frombuffer(view, dtype=np.uint8))
    del target  # no view of the mapping may outlive the copy (close() would fail)


def _populate_without_gil(mapping: mmap.mmap, size: int) -> bool:
    """``madvise(MADV_POPULATE_WRITE)`` over a whole mapping through ctypes, which lets go of
    the GIL for the call (``mmap.madvise`` holds it); False where that is not possible."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        anchor = ctypes.c_char.from_buffer(mapping)
    except (ImportError, OSError, TypeError, AttributeError):
        return False
    try:
        address = ctypes.addressof(anchor)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return int(libc.madvise(address, size, MADV_POPULATE_WRITE)) == 0
    except AttributeError:
        return False
    finally:
        del anchor  # the mapping can be closed again


class _Segment:
    """One shared-memory file of an arena, mapped by its owner, with a free list."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.path = os.path.join(folder(), name)
        self.size = size
        self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(self.fd, size)
        self.mapping = mmap.mmap(self.fd, size)
        self.free: List[List[int]] = [[0, size]]  # [offset, size], sorted by offset
        self.used: Dict[int, int] = {}  # offset -> size
        self.warm = 0  # bytes below this offset have been written once: their pages exist

    def populate(self) -> None:
        """Allocate every page (``OSError`` when the folder is full) and map it here."""
        os.posix_fallocate(self.fd, 0, self.size)  # ENOSPC here, never SIGBUS below
        if not _populate_without_gil(self.mapping, self.size):
            self._touch()
        self.warm = self.size
        os.close(self.fd)  # every page is written: puts copy through the mapping, never pwrite
        self.fd = -1

    def _touch(self) -> None:
        """Map every page of the (allocated) file, a step at a time."""
        advise = True
        for start in range(0, self.size, POPULATE_STEP):
            length = min(POPULATE_STEP, self.size - start)
            if advise:
                try:
                    self.mapping.madvise(MADV_POPULATE_WRITE, start, length)
                    continue
                except (OSError, ValueError):  # an older kernel: touch the pages instead
                    advise = False
            self.mapping[start : start + length] = bytes(length)

    def warm_fits(self, size: int) -> int:
        """How many blocks of ``size`` bytes fit in free space of written pages."""
        count = 0
        for offset, length in self.free:
            usable = min(offset + length, self.warm) - offset
            if usable >= size:
                count += usable // size
        return count

    def allocate(self, size: int, warm_only: bool = False) -> Optional[int]:
        for index, (offset, length) in enumerate(self.free):
            if warm_only and offset + size > self.warm:
                continue
            if length >= size:
                if length == size:
                    del self.free[index]
                else:
                    self.free[index] = [offset + size, length - size]
                self.used[offset] = size
                return offset
        return None

    def release(self, offset: int) -> bool:
        size = self.used.pop(offset, None)
        if size is None:
            return False
        free = self.free
        free.append([offset, size])
        free.sort()
        merged: List[List[int]] = []
        for block in free:
            if merged and merged[-1][0] + merged[-1][1] == block[0]:
                merged[-1][1] += block[1]
            else:
                merged.append(block)
        self.free = merged
        return True

    def close(self) -> None:
        try:
            self.mapping.close()
        except BufferError:
            pass  # a view of it is still alive in this process: it goes with the last one
        try:
            if self.fd >= 0:
                os.close(self.fd)
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Arena:
    """Blocks in shared-memory segments that one process owns and writes.

    Args:
        prefix: Segment names start with it (``envrunner-<caller pid>-<owner pid>``, and
            ``.<n>`` after it for the caller's own arenas).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._segments: Dict[str, _Segment] = {}
        self._lock = threading.Lock()
        self._spare_done = threading.Condition(self._lock)
        self._count = itertools.count(1)
        self._closed = False
        self._spare_wanted = 0  # the size of the spare asked for, 0 when none is being made
        self._spare_for = 0  # the size of the values it is for
        self._spares: Optional[threading.Thread] = None
        #: Spares made so far (for tests and benchmarks).
        self.spares_made = 0

    def put(self, data: Any) -> Tuple[str, int, int]:
        """Copy a contiguous buffer into the arena.

        Returns:
            ``(segment name, offset, size)``: the handle a peer maps.
        """
        view = memoryview(data).cast("B")
        size = view.nbytes
        aligned = _align(max(size, 1))
        with self._lock:
            if self._closed:
                raise ValueError("the shared-memory arena is closed")
            found = self._allocate_warm(aligned)
            if found is None and self._spare_wanted:  # a spare is on its way: cheaper to wait
                self._spare_done.wait_for(
                    lambda: not self._spare_wanted or self._closed or self._warm_fits(aligned),
                    SPARE_WAIT,
                )
                if self._closed:
                    raise ValueError("the shared-memory arena is closed")
                found = self._allocate_warm(aligned)
            segment, offset = found if found is not None else self._allocate(aligned)
            end = offset + size
            fresh_from = min(max(offset, segment.warm), end)
            if (
                aligned >= SPARE_MIN
                and not self._spare_wanted
                and self._warm_fits(aligned) < SPARES_AHEAD
            ):
                self._ask_spare(aligned)  # the next values of this size find warm pages
        if fresh_from > offset:  # warm pages: a plain memory copy
            _copy(segment.mapping, offset, view[: fresh_from - offset])
        written = fresh_from
        try:
            while written < end:  # new pages: let the kernel allocate them as it copies
                written += os.pwrite(segment.fd, view[written - offset :], written)
        except OSError:  # the folder is full: give the block back, never map unwritten pages
            with self._lock:
                segment.release(offset)
                segment.warm = min(segment.warm, offset)  # pwrite from here on: always safe
            raise
        with self._lock:  # only now may later puts copy into these pages through the mapping
            segment.warm = max(segment.warm, end)
        return segment.name, offset, size

    def _allocate_warm(self, size: int) -> Optional[Tuple[_Segment, int]]:
        for segment in self._segments.values():
            offset = segment.allocate(size, warm_only=True)
            if offset is not None:
                return segment, offset
        return None

    def _warm_fits(self, size: int) -> int:
        return sum(segment.warm_fits(size) for segment in self._segments.values())

    def _ask_spare(self, size: int) -> None:
        """Have the spares thread make a warm segment of ``size`` bytes (lock held)."""
        if not hasattr(os, "posix_fallocate"):
            return
        self._spare_wanted = max(MIN_SEGMENT, size)
        self._spare_for = size
        if self._spares is None:
            self._spares = threading.Thread(
                target=self._make_spares, name="envrunner-shm-spares", daemon=True
            )
            self._spares.start()
        else:
            self._spare_done.notify_all()

    def _make_spares(self) -> None:
        while True:
            with self._lock:
                self._spare_done.wait_for(lambda: self._spare_wanted or self._closed)
                size = 0 if self._closed else self._spare_wanted
                value = self._spare_for
                name = f"{self.prefix}-{next(self._count)}"
            if not size:
                return
            segment: Optional[_Segment] = None
            try:
                stat = os.statvfs(folder())
                if size <= stat.f_bavail * stat.f_frsize // 4:
                    segment = _Segment(name, size)
                    segment.populate()
            except OSError:  # the folder is (nearly) full: puts take new pages as before
                if segment is not None:
                    segment.close()
                segment = None
            with self._lock:
                if segment is not None:
                    if self._closed:
                        segment.close()
                    else:
                        self._segments[name] = segment
                        self.spares_made += 1
                if segment is None or self._closed or self._warm_fits(value) >= SPARES_AHEAD:
                    self._spare_wanted = 0  # else the same size again, at once
                self._spare_done.notify_all()

    def _allocate(self, size: int) -> Tuple[_Segment, int]:
        for segment in self._segments.values():
            offset = segment.allocate(size)
            if offset is not None:
                return segment, offset
        largest = max((s.size for s in self._segments.values()), default=0)
        segment = _Segment(
            f"{self.prefix}-{next(self._count)}", max(MIN_SEGMENT, size, 2 * largest)
        )
        self._segments[segment.name] = segment
        offset = segment.allocate(size)
        assert offset is not None
        return segment, offset

    def free(self, name: str, offset: int) -> None:
        """A peer is done with a block: it can hold new data."""
        with self._lock:
            segment = self._segments.get(name)
            if segment is not None:
                segment.release(offset)

    def in_use(self) -> int:
        """Bytes currently lent to peers."""
        with self._lock:
            return sum(sum(s.used.values()) for s in self._segments.values())

    def close(self) -> None:
        """Unlink every segment; peers keep what they have mapped."""
        with self._lock:
            self._closed = True
            segments, self._segments = list(self._segments.values()), {}
            self._spare_done.notify_all()
            spares = self._spares
        for segment in segments:
            segment.close()
        if spares is not None and spares is not threading.current_thread():
            spares.join(5.0)  # a spare being made is closed by the thread when it is done


class Mapper:
    """Maps peers' segments (once each) and hands out views of their blocks.

    Args:
        on_release: Called with ``(segment name, offset)`` once nothing in this process uses a
            block any more; may run in any thread (it is a garbage-collection finalizer).
    """

    def __init__(self, on_release: Callable[[str, int], None]) -> None:
        self._on_release = on_release
        self._maps: Dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()

    def attach(self, names: Any) -> None:
        """Map the named segments not yet mapped (call while the files surely exist)."""
        for name in names:
            if name in self._maps:
                continue
            if os.sep in name or not name.startswith("envrunner-"):
                raise ValueError(f"not an envrunner segment: {name!r}")
            fd = os.open(os.path.join(folder(), name), os.O_RDWR)
            try:
                mapping = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
            with self._lock:
                self._maps.setdefault(name, mapping)

    def block(self, name: str, offset: int, size: int) -> Any:
        """A writable view of a block; the owner is told when the last user drops it."""
        self.attach([name])
        mapping = self._maps[name]
        np = sys.modules.get("numpy")
        if np is None:
            try:
                import numpy as np
            except ImportError:
                np = None
        if np is None:  # nothing here can hold a view alive and tell us: copy it out
            data = bytes(mapping[offset : offset + size])
            self._on_release(name, offset)
            return data
        view = np.frombuffer(mapping, dtype=np.uint8, count=size, offset=offset)
        weakref.finalize(view, self._on_release, name, offset)
        return view

    def forget(self, prefix: str) -> None:
        """Drop the cached mappings of one owner (its views keep their memory alive)."""
        with self._lock:
            for name in [n for n in self._maps if n.startswith(prefix + "-")]:
                del self._maps[name]

    def close(self) -> None:
        with self._lock:
            self._maps.clear()


def unlink_owned(prefix: str) -> int:
    """Unlink every segment of one owner (after it died); returns how many."""
    return _unlink_where(lambda name: name.startswith(prefix + "-"))


def remove_stale() -> int:
    """Unlink the segments of callers that are no longer running; returns how many."""
    return _unlink_where(_of_a_gone_caller)


def _of_a_gone_caller(name: str) -> bool:
    parts = name.split("-")
    if len(parts) < 4 or parts[0] != "envrunner" or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


def _unlink_where(wanted: Callable[[str], bool]) -> int:
    """Unlink the segments whose names ``wanted`` accepts; returns how many."""
    try:
        where = folder()
        names = os.listdir(where)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if wanted(name):
            try:
                os.unlink(os.path.join(where, name))
                removed += 1
            except OSError:
                pass
    return removed
