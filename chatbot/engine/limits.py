"""What a request may ask of llama.cpp: option types checked as Ollama checks them, and
ceilings on the options that size memory, threads and work.

Ceilings come from the environment, read when the engine starts (a bad value stops it):

- ENGINE_MAX_CTX: num_ctx, tokens (default: the model's trained context length; the
  trained length stays a ceiling when this is larger);
- ENGINE_MAX_THREADS: num_thread (default: the cores this process may run on);
- ENGINE_MAX_PREDICT: num_predict, tokens (default: none, generation stops when the loaded
  context is full); also the limit of a request with no num_predict or -1/-2;
- ENGINE_MAX_BATCH: num_batch, tokens (default 512, Ollama's num_batch; llama-cpp-python
  keeps a row of logits, vocabulary x 4 bytes, per batch slot).

A value above its ceiling is lowered to it (and logged), never refused: Ollama clients send
big num_ctx values freely. Types are read by Ollama's rules (chatbot.engine.options).
"""
import logging
import os
from dataclasses import dataclass

from .ollama_format import ApiError
from .options import INT, TYPES, OptionError, read

log = logging.getLogger(__name__)

CEILINGS = ("num_ctx", "num_batch", "num_thread", "num_predict")  # lowered, never refused
INT32 = 2**31 - 1
DEFAULT_BATCH = 512


def check_options(options):
    """The options read by Ollama's rules (chatbot.engine.options), made fit for llama.cpp:
    a 400 (ApiError) naming the first bad one."""
    try:
        checked = read(options)
    except OptionError as exc:
        raise ApiError(400, str(exc)) from None
    for key, value in checked.items():
        if key == "seed":  # Ollama hands llama.cpp a uint32; negative means a random seed
            checked[key] = value if value < 0 else value & 0xFFFFFFFF
        elif TYPES[key] == INT and key not in CEILINGS:
            checked[key] = max(-INT32 - 1, min(value, INT32))
    return checked


def _env_int(environ, name):
    raw = (environ.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def env_count(environ, name, default, what):
    """A whole number, 0 or more, of `what` from the environment (unset or empty: default);
    anything else a ValueError, which stops the engine."""
    raw = (environ.get(name) or "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name} must be a number of {what}, got {raw!r}")
    return value


def default_threads():
    # llama-cpp-python defaults to half the cores; like Ollama, use every core we may run on.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Limits:
    max_ctx: int = None  # None: the model's trained context length
    max_threads: int = None  # None: the cores we may run on
    max_predict: int = None  # None: until the loaded context is full
    max_batch: int = DEFAULT_BATCH

    @classmethod
    def from_env(cls, environ=None):
        environ = os.environ if environ is None else environ
        return cls(max_ctx=_env_int(environ, "ENGINE_MAX_CTX"),
                   max_threads=_env_int(environ, "ENGINE_MAX_THREADS") or default_threads(),
                   max_predict=_env_int(environ, "ENGINE_MAX_PREDICT"),
                   max_batch=_env_int(environ, "ENGINE_MAX_BATCH") or DEFAULT_BATCH)

    def ctx(self, asked, trained, default_cap):
        """n_ctx for a model trained on `trained` tokens; `asked` 0/None means its default."""
        ceiling = min(trained, self.max_ctx) if self.max_ctx else trained
        value = _lowered("num_ctx", asked, ceiling) if asked else min(trained, default_cap,
                                                                       ceiling)
        return max(value, 4)  # Ollama's floor: below it no prompt fits at all

    def threads(self, asked, default):
        return _lowered("num_thread", asked or default, self.max_threads or default_threads())

    def batch(self, asked, n_ctx):
        return min(_lowered("num_batch", asked or DEFAULT_BATCH, self.max_batch), n_ctx)

    def predict(self, asked):
        """Tokens to generate at most, or a value <= 0 for "until the context is full"."""
        if self.max_predict is None:
            return asked
        return self.max_predict if asked <= 0 else _lowered("num_predict", asked,
                                                            self.max_predict)


def _lowered(key, value, ceiling):
    if value > ceiling:
        log.info("option %s=%d lowered to the engine's ceiling %d", key, value, ceiling)
        return ceiling
    return value
