"""Unmap the clean pages of the agent's shared libraries once start-up is over.

A Linux process's RSS counts every page of a library mapped into it, and a fault maps
not only the page touched but its neighbours already in the page cache (fault-around,
64 kB). Start-up touches a lot of library text that the steady state never runs again:
the imports, onnxruntime's kernel registration and graph optimisation at session
creation, cryptography's bundle check, pydantic's config validation. How much of it
stays mapped depends on how much of each file the page cache holds, not on the agent:
the same agent idles at 110 MB on a machine whose cache holds part of the venv and at
125 MB on one that just installed it.

:func:`unmap_library_text` asks the kernel (``madvise(MADV_DONTNEED)``) to drop the
process's mappings of those pages. The pages stay in the page cache; a page the agent
runs again maps back on its next access (a minor fault, ~1 µs), and one it never runs
again is left unmapped, the first the kernel reclaims when memory runs short. It is
safe only for pages whose content is the file's, so a range is unmapped only where two
views agree: the C library's list of loaded objects says it is a read-only loaded segment
of a library that needs no text relocations (the list holds an object only once all its
segments are mapped, so a library being loaded by another thread at that moment never
shows its interim whole-file mapping), and smaps says its mapping holds no private
copy-on-write page (relocated data shows as ``Anonymous``). CPython never unloads a
library, so neither view goes stale before the call.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LibraryMapping", "clean_library_mappings", "loaded_readonly_segments",
           "unmap_library_text"]

log = logging.getLogger(__name__)

MADV_DONTNEED = 4


@dataclass(frozen=True)
class LibraryMapping:
    start: int
    end: int
    rss_kb: int


def _is_library(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return path.startswith("/") and (name.endswith(".so") or ".so." in name)


def clean_library_mappings(smaps: str) -> list[LibraryMapping]:
    """The mappings in ``smaps`` text that hold only a library file's own pages.

    >>> text = '''7f00-7f10 r-xp 00000000 08:01 12 /usr/lib/libx.so.1
    ... Rss:                  16 kB
    ... Anonymous:             0 kB
    ... 7f10-7f20 r--p 00010000 08:01 12 /usr/lib/libx.so.1
    ... Rss:                   8 kB
    ... Anonymous:             4 kB
    ... 7f20-7f30 rw-p 00020000 08:01 12 /usr/lib/libx.so.1
    ... Rss:                   4 kB
    ... Anonymous:             0 kB
    ... 7f30-7f40 r--p 00000000 08:01 13 /var/lib/forewarn/alerts.sqlite
    ... Rss:                   4 kB
    ... Anonymous:             0 kB
    ... '''
    >>> [(hex(m.start), m.rss_kb) for m in clean_library_mappings(text)]
    [('0x7f00', 16)]
    """
    out: list[LibraryMapping] = []
    head: list[str] | None = None
    rss = anon = 0

    def close() -> None:
        if head is None or len(head) < 6 or "w" in head[1] or anon or not rss:
            return
        if not _is_library(" ".join(head[5:])):
            return
        lo, hi = (int(x, 16) for x in head[0].split("-"))
        out.append(LibraryMapping(lo, hi, rss))

    for line in smaps.splitlines():
        parts = line.split()
        if not parts:
            continue
        if not parts[0].endswith(":"):  # a mapping's header: range perms offset dev inode path
            close()
            head, rss, anon = parts, 0, 0
        elif parts[0] == "Rss:":
            rss = int(parts[1])
        elif parts[0] == "Anonymous:":
            anon = int(parts[1])
    close()
    return out


PAGE = mmap.PAGESIZE
PT_LOAD, PT_DYNAMIC, PF_W = 1, 2, 2
DT_NULL, DT_TEXTREL, DT_FLAGS, DF_TEXTREL = 0, 22, 30, 4


class _Phdr(ctypes.Structure):  # Elf64_Phdr
    _fields_ = [("p_type", ctypes.c_uint32), ("p_flags", ctypes.c_uint32),
                ("p_offset", ctypes.c_uint64), ("p_vaddr", ctypes.c_uint64),
                ("p_paddr", ctypes.c_uint64), ("p_filesz", ctypes.c_uint64),
                ("p_memsz", ctypes.c_uint64), ("p_align", ctypes.c_uint64)]


class _Info(ctypes.Structure):  # struct dl_phdr_info, the fields every glibc has
    _fields_ = [("dlpi_addr", ctypes.c_uint64), ("dlpi_name", ctypes.c_char_p),
                ("dlpi_phdr", ctypes.POINTER(_Phdr)), ("dlpi_phnum", ctypes.c_uint16)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_Info), ctypes.c_size_t,
                             ctypes.c_void_p)


def _text_relocated(base: int, ph: _Phdr) -> bool:
    """Whether a dynamic section asks for text relocations (its text is then written)."""
    dyn = ctypes.cast(base + ph.p_vaddr, ctypes.POINTER(ctypes.c_int64))
    for i in range(0, 2 * 4096, 2):
        tag, val = dyn[i], dyn[i + 1]
        if tag == DT_NULL:
            return False
        if tag == DT_TEXTREL or (tag == DT_FLAGS and val & DF_TEXTREL):
            return True
    return True  # no end found: do not touch it


def loaded_readonly_segments() -> list[tuple[int, int]]:
    """Whole pages of the read-only loaded segments of the process's libraries."""
    out: list[tuple[int, int]] = []

    def visit(info_p: ctypes._Pointer[_Info], _size: int, _data: object) -> int:
        info = info_p.contents
        name = (info.dlpi_name or b"").decode(errors="replace")
        if not name.startswith("/"):  # the program itself, the vDSO
            return 0
        phs = [info.dlpi_phdr[i] for i in range(info.dlpi_phnum)]
        if any(ph.p_type == PT_DYNAMIC and _text_relocated(info.dlpi_addr, ph) for ph in phs):
            return 0
        for ph in phs:
            if ph.p_type != PT_LOAD or ph.p_flags & PF_W:
                continue
            lo = info.dlpi_addr + ph.p_vaddr
            # Pages only partly in the segment may be shared with a writable neighbour.
            lo, hi = -(-lo // PAGE) * PAGE, (lo + ph.p_filesz) // PAGE * PAGE
            if hi > lo:
                out.append((lo, hi))
        return 0

    # PyDLL keeps the GIL across the walk: the C library holds its loader lock while it
    # calls back, and a thread importing an extension holds the GIL while it waits for
    # that lock, so letting go of the GIL here could deadlock the two.
    ctypes.PyDLL(None).dl_iterate_phdr(_CALLBACK(visit), None)
    return out


def _intersect(a: Iterable[tuple[int, int]],
               b: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges covered by both lists (each a set of disjoint ``[lo, hi)``).

    >>> _intersect([(0, 10), (20, 30)], [(5, 25)])
    [(5, 10), (20, 25)]
    """
    xs, ys = sorted(a), sorted(b)
    out, i, j = [], 0, 0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if lo < hi:
            out.append((lo, hi))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def _resident_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE // 1024


def unmap_library_text(smaps_path: Path = Path("/proc/self/smaps")) -> int:
    """Drop this process's mappings of its libraries' clean pages; kB of RSS it gave up.

    Returns 0 where there is no such call (not 64-bit Linux with glibc) or the kernel
    refuses it; says why once in the log.
    """
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return 0
    try:
        before = _resident_kb()
        clean = [(m.start, m.end) for m in clean_library_mappings(smaps_path.read_text())]
        segments = loaded_readonly_segments()
    except (OSError, AttributeError) as exc:  # no smaps, no dl_iterate_phdr (musl)
        log.warning("library pages not unmapped: %s", exc)
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    for lo, hi in _intersect(clean, segments):
        if madvise(lo, hi - lo, MADV_DONTNEED) != 0:
            err = ctypes.get_errno()
            log.warning("library pages not unmapped: madvise refused (%s)",
                        errno.errorcode.get(err, err))
            break
    return max(0, before - _resident_kb())
