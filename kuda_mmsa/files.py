"""Files and folders shared by every writer: atomic replacement, left-over temp files,
writable output folders and the default stage-1 knowledge folder. Standard library only
(the start-up hook's side of the package may use it)."""
import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import KudaInputError

TEMP_SUFFIX = ".tmp"
MIN_FREE_BYTES = 64 * 2 ** 20


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextmanager
def atomic_path(path):
    """Yield a temp path next to `path`; on success it replaces `path` in one rename, on any
    error it is removed and `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise KudaInputError(
                f"The disk holding '{path.parent}' is full: '{path.name}' could not be written "
                f"(its previous version, if any, is intact). Free some space and run again; an "
                f"interrupted run resumes from its last saved state.") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def default_data_root() -> Path:
    """$MMSA_DATA_ROOT, else ~/MMSA/datasets (--data-root overrides both)."""
    return Path(os.environ.get("MMSA_DATA_ROOT") or Path.home() / "MMSA" / "datasets").expanduser()
