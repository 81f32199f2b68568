"""What the engine keeps on disk, under `$XDG_CACHE_HOME/chatbot/` (default ~/.cache/chatbot):

- engine-digests.json: sha256 of model files by path + mtime + size (hashing costs ~0.3 s);
- engine-models.json: the names made by /api/copy and /api/create and the folder models
  removed by /api/delete. Every engine that uses the same cache dir shares it (it is
  re-read whenever it changes on disk), as Ollama servers share one models directory.

Both files are rewritten atomically; an unreadable or corrupt one counts as empty.
"""
import copy
import json
import logging
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on POSIX: writers in one process are still serialised
    fcntl = None

log = logging.getLogger(__name__)


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chatbot"


def canonical(name):
    """Ollama's name matching: case-insensitive, a missing tag means ":latest"."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def display_name(name):
    """How a new name is listed: as given, with ":latest" when it has no tag (as Ollama)."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")


def valid_name(name):
    """Ollama's model.ParseName(...).IsValid(): [host/][namespace/]model[:tag]."""
    if not isinstance(name, str) or not name.strip():
        return False
    *path, last = name.strip().split("/")
    model, colon, tag = last.partition(":")
    if len(path) > 2 or not _PART.fullmatch(model) or (colon and not _PART.fullmatch(tag)):
        return False
    if len(path) == 2 and not _HOST.fullmatch(path[0]):
        return False
    return not path or bool(_NAMESPACE.fullmatch(path[-1]))


def file_signature(path):
    st = Path(path).stat()
    return [st.st_mtime_ns, st.st_size]


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


class DigestCache:
    """sha256 of model files, remembered on disk by path + mtime + size."""

    def __init__(self, path=None):
        self.path = Path(path) if path else cache_dir() / "engine-digests.json"
        self._lock = threading.Lock()
        self._entries = None

    def _load(self):
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}
            if not isinstance(self._entries, dict):
                self._entries = {}
        return self._entries

    def digest(self, path):
        import hashlib

        path = Path(path).resolve()
        signature = file_signature(path)
        with self._lock:
            entry = self._load().get(str(path))
            if isinstance(entry, dict) and entry.get("signature") == signature:
                return entry["sha256"]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        with self._lock:
            self._entries[str(path)] = {"signature": signature, "sha256": h.hexdigest()}
            try:  # best effort: a read-only home only costs a re-hash next start
                _write_json(self.path, self._entries)
            except OSError:
                pass
        return h.hexdigest()


def _empty():
    return {"version": 1, "copies": {}, "deleted": {}}


def _clean(raw):
    """The valid entries of a parsed registry file; anything malformed is dropped."""
    data = _empty()
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    copies = raw.get("copies") if isinstance(raw.get("copies"), dict) else {}
    for key, entry in copies.items():
        if (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("path"), str)
                and isinstance(entry.get("modified_at"), (int, float))):
            data["copies"][canonical(key)] = {
                "name": entry["name"], "path": entry["path"],
                "bundled": entry.get("bundled") is True,
                "modified_at": float(entry["modified_at"])}
    deleted = raw.get("deleted") if isinstance(raw.get("deleted"), dict) else {}
    for key, entry in deleted.items():
        if (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("signature"), list)):
            data["deleted"][canonical(key)] = {"path": entry["path"],
                                               "signature": entry["signature"]}
    return data


class NameStore:
    """engine-models.json: {"copies": {canonical: {name, path, bundled, modified_at}},
    "deleted": {canonical: {path, signature}}}."""

    def __init__(self, path=None):
        self.path = Path(path) if path else cache_dir() / "engine-models.json"
        self._lock = threading.Lock()
        self._seen = None  # (mtime_ns, size, inode) of the file last read
        self._data = _empty()

    def _stat(self):
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self):
        seen = self._stat()
        if seen != self._seen:
            data = _empty()
            if seen is not None:
                try:
                    data = _clean(json.loads(self.path.read_text(encoding="utf-8")))
                except (OSError, ValueError) as exc:
                    log.warning("ignoring unreadable %s: %s", self.path, exc)
            self._seen, self._data = seen, data
        return self._data

    def snapshot(self):
        """The current names; callers must not modify what they get."""
        with self._lock:
            return self._read()

    @contextmanager
    def edit(self):
        """A copy of the data to change in place; written back (atomically) on exit. Holds a
        file lock so that two engines sharing the cache dir do not lose each other's edits."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                if fcntl:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                data = copy.deepcopy(self._read())
                yield data
                _write_json(self.path, data)
                self._read()
