"""Files and folders shared by every writer: atomic replacement, left-over temp files,
writable output folders, locks between processes, CSV files that several processes append
to, and the default stage-1 knowledge folder. Standard library only (the start-up hook's
side of the package may use it)."""
import csv
import errno
import io
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import KudaInputError

TEMP_SUFFIX = ".tmp"
MIN_FREE_BYTES = 64 * 2 ** 20
# errors of a write that the user can act on (full disk, quota, file size limit, permissions)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextmanager
def atomic_path(path):
    """Yield a temp path next to `path`; on success it replaces `path` in one rename, on any
    error it is removed and `path` keeps its old content."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e.strerror or str(e), full=e.errno in (errno.ENOSPC, errno.EDQUOT)) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_error(path, reason: str, full: Optional[bool] = None) -> KudaInputError:
    """The one-paragraph error of a write that failed: what happened and what is kept."""
    path = Path(path)
    if full is None:        # the writer did not say why (torch.save): look at the disk
        try:
            full = shutil.disk_usage(path.parent).free < MIN_FREE_BYTES
        except OSError:
            full = False
    what = (f"The disk holding '{path.parent}' is full: '{path.name}' could not be written ({reason})"
            if full else f"'{path.name}' could not be written in '{path.parent}' ({reason})")
    return KudaInputError(
        f"{what}. Its previous version, if any, is intact: nothing written before is lost, and an "
        f"interrupted run resumes from its last saved state. "
        + ("Free some space and run the same command again." if full else
           "Fix the folder (permissions, file size limit, space) and run the same command again."))


def atomic_write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def remove_stale_temps(path) -> list:
    """Remove temp files an atomic write of `path` left when its process was killed
    mid-write (they are never valid). Returns the removed paths."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for tmp in path.parent.glob(_temp_prefix(path) + "*" + TEMP_SUFFIX):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def ensure_writable_dir(folder, what: str) -> Path:
    """Create `folder` if needed and check that a file can be written there and that the
    disk is not full; KudaInputError naming the folder and the option that sets it."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kuda-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise KudaInputError(
            f"The {what} '{folder}' is not writable ({e.strerror or e}). Choose another folder "
            f"or fix its permissions before training, so that no result is lost at the end.") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise KudaInputError(
            f"The disk holding the {what} '{folder}' has only {free // 2 ** 20} MiB free; "
            f"checkpoints and results need more. Free some space or choose another folder.")
    return folder


def default_knowledge_root() -> Path:
    """$KUDA_MMSA_KNOWLEDGE_DIR, else ~/MMSA/knowledge (--knowledge-dir overrides both)."""
    return Path(os.environ.get("KUDA_MMSA_KNOWLEDGE_DIR") or Path.home() / "MMSA" / "knowledge").expanduser()


def default_result_root() -> Path:
    """MMSA's result folder (MMSA_run's ``res_save_dir`` default): ~/MMSA/results."""
    return Path.home() / "MMSA" / "results"


def output_folder(out, kind: str, name: str, res_save_dir=None) -> Path:
    """``--out`` when given, else ``<res_save_dir or ~/MMSA/results>/<kind>/<name>``."""
    if out:
        return Path(out).expanduser()
    root = Path(res_save_dir).expanduser() if res_save_dir else default_result_root()
    return root / kind / name


def default_data_root() -> Path:
    """$MMSA_DATA_ROOT, else ~/MMSA/datasets (--data-root overrides both)."""
    return Path(os.environ.get("MMSA_DATA_ROOT") or Path.home() / "MMSA" / "datasets").expanduser()


# ---------------------------------------------------------------------- locks between processes
class LockHeld(Exception):
    """A non-blocking ``file_lock`` found the lock held by another process (``holder``: what
    that process wrote into the lock file: its pid, host and start time)."""

    def __init__(self, path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = Path(path), holder or "another process"


def lock_path(path) -> Path:
    """The lock file of ``path``: a hidden file next to it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def file_lock(path, blocking: bool = True, required: bool = True):
    """An exclusive lock between processes on the file ``path`` (created if needed; flock, so the
    system releases it when its process dies, even by kill -9). ``blocking=False``: LockHeld
    when another process holds it. ``required=False``: a no-op where no lock can be taken
    (no fcntl, a read-only folder); otherwise such a folder is an OSError."""
    try:
        import fcntl
    except ImportError:     # not POSIX: no lock
        yield
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError:
        if required:
            raise
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise LockHeld(path, handle.read().strip()) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
        except OSError:
            pass
        yield
    finally:
        try:
            fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()


# ---------------------------------------------------------------------- CSV files shared by processes
def read_csv_table(path) -> Tuple[Optional[List[str]], List[List[str]]]:
    """(header, rows) of a CSV file, cells as written; (None, []) for a missing or empty file.
    KudaInputError when it cannot be read."""
    path = Path(path)
    if not path.exists():
        return None, []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KudaInputError(f"The CSV file '{path}' could not be read ({e}). Move it away or choose "
                             f"another output folder.") from None
    if not text.strip():
        return None, []
    try:
        table = [r for r in csv.reader(io.StringIO(text)) if r]
    except csv.Error as e:
        raise KudaInputError(f"The CSV file '{path}' is not valid CSV ({e}). Move it away or choose "
                             f"another output folder.") from None
    return (table[0], table[1:]) if table else (None, [])


def check_csv_target(path, what: str, where: str, header_ok: Optional[Callable[[List[str]], Optional[str]]] = None
                     ) -> None:
    """Refuse, before any work, a CSV file that a row could not be added to at the end: its
    folder is a file or not writable, the file is a folder, read-only or unreadable, or
    ``header_ok(header)`` returns why its header does not fit. ``what`` names the file, ``where``
    how to choose another place (the option)."""
    path = Path(path)
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise KudaInputError(f"The {what} goes to '{path}', but '{parent}' is a file, not a folder. Move that "
                             f"file away or choose another folder ({where}) before training, so that no result "
                             f"is lost at the end.")
    ensure_writable_dir(parent, f"folder of the {what}")
    if path.exists():
        if not path.is_file():
            raise KudaInputError(f"The {what} '{path}' is a folder, not a CSV file. Move it away or choose "
                                 f"another folder ({where}).")
        if not os.access(path, os.W_OK) or not (path.stat().st_mode & 0o222):
            raise KudaInputError(f"The {what} '{path}' is read-only, so this run's row could not be added at the "
                                 f"end. Make it writable (chmod u+w), move it away, or choose another folder "
                                 f"({where}) before training.")
        header, _ = read_csv_table(path)
        why = header_ok(header) if (header is not None and header_ok is not None) else None
        if why:
            raise KudaInputError(f"The {what} '{path}' {why} A row of this run could not be added to it. Move "
                                 f"it away or choose another folder ({where}) before training.")


def update_csv(path, update: Callable[[Optional[List[str]], List[List[str]]], Tuple[List[str], List[List[str]]]]
               ) -> Path:
    """Change a CSV file that other processes change too: under its lock, read it, let
    ``update(header, rows) -> (header, rows)`` change it, and replace it in one rename; no row
    another process added in between is lost, and a reader never sees half a file."""
    path = Path(path)
    with file_lock(lock_path(path)):
        header, rows = read_csv_table(path)
        header, rows = update(header, rows)
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return path


def append_csv_row(path, header: Sequence[str], row: Sequence, side_file: bool = True) -> Tuple[Path, Optional[str]]:
    """Add ``row`` (cells in the order of ``header``) to the CSV ``path`` under its lock. When
    the file's header differs, or it cannot be written, the row goes to a side file
    ``<name>.<pid>.csv`` next to it (or the current folder) instead: (where it went, why
    it did not go to ``path``, or None)."""
    path, header, row = Path(path), [str(h) for h in header], [str(c) for c in row]

    def add(old, rows):
        if old is not None and old != header:
            raise _HeaderMismatch(old)
        return header, rows + [row]

    try:
        return update_csv(path, add), None
    except _HeaderMismatch as e:
        why = f"its columns {e.header} differ from this row's {header}"
    except (KudaInputError, OSError) as e:
        why = str(e)
    if not side_file:
        raise KudaInputError(f"The row could not be added to '{path}': {why}.")
    for folder in (path.parent, Path.cwd()):
        side = folder / f"{path.stem}.{os.getpid()}.csv"
        try:
            update_csv(side, lambda old, rows: (header, rows + [row]))
            return side, why
        except (KudaInputError, OSError):
            continue
    raise KudaInputError(f"The row could not be added to '{path}' ({why}), nor written to a side file next to "
                         f"it or in '{Path.cwd()}': {dict(zip(header, row))}")


class _HeaderMismatch(Exception):
    def __init__(self, header):
        super().__init__(str(header))
        self.header = header
