"""The KV state of recent prompts, so that a conversation's next turn evaluates only its new
tokens whatever ran in between (llama.cpp keeps one context: another session's turn
overwrites it).

After each generation the context's state (its one sequence, without logits) is kept with
the tokens it holds; before the next, the kept state sharing the longest token prefix with
the prompt is loaded when it shares more than the live context does. Only that shared prefix
is used: llama-cpp-python's generate() drops everything after it from the KV cache before it
evaluates, so a state's other tokens never reach another prompt. Prefixes are compared token
by token, never by hash.

ENGINE_CACHE_MB (default 256; 0 turns it off) bounds the states kept, least recently used out
first. States belong to one loaded Llama and go with it, except when it is unloaded to make
room for another model (resident.py): then they are kept, detached, and a reload of the same
file at the same n_ctx adopts them (llama.cpp checks a state's shape as it loads it; one
that does not fit is dropped and the prompt evaluated whole). A hit is a prompt of which at least
half was not evaluated again (from a kept state, or from the live context: the turn right
after its own); a load, a kept state loaded.
"""
import ctypes
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .limits import env_count

log = logging.getLogger(__name__)
DEFAULT_MB = 256
SEQ = 0  # llama-cpp-python decodes every prompt as sequence 0


def common_prefix(a, b):
    """How many leading tokens two token arrays share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


@dataclass
class State:
    llm: object  # None while its model is unloaded and the state kept for a reload
    tokens: np.ndarray
    data: ctypes.Array  # llama.cpp's bytes, handed back to it as they are (no copies)
    family: tuple = None  # set when detached: what a reload must match to adopt it


class PromptCache:
    def __init__(self, budget_bytes):
        self.budget = budget_bytes
        self.states = OrderedDict()  # id -> State, least recently used first
        self.hits = self.misses = self.loads = self.stored = 0
        self.reused_tokens = self.evaluated_tokens = 0  # prompt tokens not evaluated, evaluated
        self.bytes = 0  # of the states kept (a count: /metrics reads it without the lock)
        self._next = 0

    @classmethod
    def from_env(cls, environ=None):
        mb = env_count(environ or os.environ, "ENGINE_CACHE_MB", DEFAULT_MB, "megabytes")
        return cls(mb * 1024 * 1024)

    def restore(self, llm, tokens):
        """Before `tokens` are generated from: load the kept state that shares the most
        tokens with them, if that beats the live context. Returns the tokens that will not be
        evaluated again."""
        live = common_prefix(llm.input_ids[:llm.n_tokens], tokens)
        best, shared = None, live
        for key, state in self.states.items():
            if state.llm is llm:
                n = common_prefix(state.tokens, tokens)
                if n > shared:
                    best, shared = key, n
        if best is not None:
            self.states.move_to_end(best)
            if _load(llm, self.states[best]):
                self.loads += 1
            else:
                self._drop(best)
                shared = 0
        # generate() replays the last token when the whole prompt is held
        shared = min(shared, len(tokens) - 1)
        self.hits += shared * 2 >= len(tokens)
        self.misses += shared * 2 < len(tokens)
        self.reused_tokens += shared
        self.evaluated_tokens += len(tokens) - shared
        return shared

    def save(self, llm):
        """Keep the state of what `llm` holds now (the last prompt and its reply)."""
        if not self.budget or llm.n_tokens == 0:
            return
        ctx = llm._ctx.ctx
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(ctx, SEQ)
        if size > self.budget:
            return
        buffer = (ctypes.c_uint8 * size)()
        if not llama_cpp.llama_state_seq_get_data(ctx, buffer, size, SEQ):
            return
        tokens = llm.input_ids[:llm.n_tokens].copy()
        # A kept state whose tokens this one starts with says nothing this one does not.
        for key in [k for k, s in self.states.items()
                    if s.llm is llm and common_prefix(s.tokens, tokens) == len(s.tokens)]:
            self._drop(key)
        self._next += 1
        self.states[self._next] = State(llm, tokens, buffer)
        self.bytes += len(buffer)
        self.stored += 1
        while self.bytes > self.budget:
            self._drop(next(iter(self.states)))

    def forget(self, llm, keep_as=None):
        """`llm` is unloaded: its states go, or with keep_as (its file and n_ctx) are kept,
        still within the budget, for adopt()."""
        for key in [k for k, s in self.states.items() if s.llm is llm]:
            if keep_as is None:
                self._drop(key)
            else:
                self.states[key].llm, self.states[key].family = None, keep_as

    def adopt(self, llm, family):
        """`llm` was just loaded: it takes the kept states of an earlier instance of its
        family (the same file, unchanged, at the same n_ctx)."""
        for state in self.states.values():
            if state.llm is None and state.family == family:
                state.llm, state.family = llm, None

    def _drop(self, key):
        self.bytes -= len(self.states.pop(key).data)

    def figures(self):
        return {"hits": self.hits, "misses": self.misses, "loads": self.loads,
                "stored": self.stored,
                "reused_tokens": self.reused_tokens,
                "evaluated_tokens": self.evaluated_tokens, "states": len(self.states),
                "bytes": self.bytes, "budget_bytes": self.budget}


def _load(llm, state):
    import llama_cpp

    llm._ctx.kv_cache_clear()
    if not llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, state.data, len(state.data), SEQ):
        log.warning("a kept prompt state did not load; evaluating the prompt whole")
        llm.reset()
        llm._ctx.kv_cache_clear()
        return False
    n = len(state.tokens)
    llm.input_ids[:n] = state.tokens
    llm.n_tokens = n
    llm._requires_eval = True  # no logits were kept: generate() replays the last token
    return True
