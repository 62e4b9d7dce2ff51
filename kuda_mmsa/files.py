"""Files and folders shared by every writer: atomic replacement and the default stage-1
knowledge folder. Standard library only (the start-up hook's side of the package may use it)."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temp path next to `path`; on success it replaces `path` in one rename, on any
    error it is removed and `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_knowledge_root() -> Path:
    """$KUDA_MMSA_KNOWLEDGE_DIR, else ~/MMSA/knowledge (--knowledge-dir overrides both)."""
    return Path(os.environ.get("KUDA_MMSA_KNOWLEDGE_DIR") or Path.home() / "MMSA" / "knowledge").expanduser()
