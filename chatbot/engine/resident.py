"""The engine's loaded Llamas, and how many model files may be loaded at once.

At most one chat and one embedding instance per model file (a copy's name shares its
source's, as Ollama keeps one runner per blob). ENGINE_MAX_LOADED_MODELS bounds the files
loaded as Ollama's OLLAMA_MAX_LOADED_MODELS bounds its runners (default 3, Ollama's per GPU
and on a CPU; 0: no bound): a file loaded for chat and for embeddings counts once. Loading a
file past the bound first unloads another: the one whose time is up soonest (the shortest
keep_alive left; among equals, forever being the engine's default, the least recently used).
Ollama's findRunnerToUnload (server/sched.go) takes an idle runner, the shortest keep-alive
first; here every instance is idle while a load holds the engine lock.

An instance unloaded to make room gives its prompt states to the prompt cache to keep
(PromptCache.forget with keep_as): a reload of the same file, unchanged since it was loaded
(mtime and size), at the same n_ctx, takes them back, so a conversation's next turn after a
swap evaluates only its new tokens. Every other unload (expired, keep_alive 0, a reload with
other sizes, a deleted name, shutdown) drops them, as before.

Loads and unloads (by reason) of instances (a file's chat and embedding instances are two)
are counted for the engine's /metrics. Call everything with the engine lock held.
"""
import itertools
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from .limits import env_count

log = logging.getLogger(__name__)

DEFAULT_MAX_LOADED = 3
REASONS = ("bound", "expired", "request", "reload", "deleted", "shutdown")
_uses = itertools.count()  # an order of use: monotonic, never equal


@dataclass
class Loaded:
    model: object  # the ModelFile it was last used under: what /api/ps shows
    llm: object
    n_ctx: int
    threads: int
    expires_at: datetime
    n_batch: int = 0
    family: tuple = None  # (path, file signature at load, n_ctx): whose prompt states fit
    used: int = field(default_factory=lambda: next(_uses))


class Resident:
    def __init__(self, max_loaded, prompts):
        self.max_loaded, self.prompts = max_loaded, prompts
        self.chat = {}  # file path -> Loaded
        self.embed = {}  # file path -> Loaded
        self.loads = 0
        self.unloads = Counter()  # reason -> count

    @classmethod
    def from_env(cls, prompts, environ=None):
        return cls(env_count(environ or os.environ, "ENGINE_MAX_LOADED_MODELS",
                             DEFAULT_MAX_LOADED, "models (0: no bound)"), prompts)

    def files(self):
        return {*self.chat, *self.embed}

    def use(self, loaded, model):
        loaded.model, loaded.used = model, next(_uses)
        return loaded.llm

    def add(self, table, key, loaded):
        table[key] = loaded
        self.loads += 1
        if loaded.family is not None:
            self.prompts.adopt(loaded.llm, loaded.family)

    def make_room(self, key):
        """Before `key`'s file is loaded: unload others until it fits within the bound."""
        while self.max_loaded and key not in self.files() and \
                len(self.files()) >= self.max_loaded:
            victim = min(self.files(), key=self._order)
            log.info("unloading %s to load %s (ENGINE_MAX_LOADED_MODELS=%d)", victim, key,
                     self.max_loaded)
            self.unload(victim, "bound")

    def _order(self, key):
        """A file's instances' latest expiry and use: the smallest goes first."""
        instances = [t[key] for t in (self.chat, self.embed) if key in t]
        return (max(i.expires_at for i in instances), max(i.used for i in instances))

    def unload(self, key, reason, chat=True, embed=True):
        for wanted, table in ((chat, self.chat), (embed, self.embed)):
            loaded = table.pop(key, None) if wanted else None
            if loaded:
                keep = loaded.family if reason == "bound" else None
                self.prompts.forget(loaded.llm, keep_as=keep)
                loaded.llm.close()
                self.unloads[reason] += 1

    def figures(self):
        return {"loads": self.loads, "unloads": {r: self.unloads[r] for r in REASONS},
                "loaded": len(self.files()), "max_loaded": self.max_loaded}
