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
big num_ctx values freely. A value of the wrong type is a 400 with Ollama's wording.
"""
import json
import logging
import math
import os
from dataclasses import dataclass

from .ollama_format import ApiError

log = logging.getLogger(__name__)

INT, FLOAT, BOOL, ARRAY = "integer", "float32", "boolean", "array"
# Ollama's api.Options and api.Runner fields, by JSON name; unknown names are ignored, as
# Ollama does. Fields the engine has no use for (num_gpu...) are type-checked all the same.
OPTION_TYPES = {
    **dict.fromkeys(("num_ctx", "num_batch", "num_thread", "num_gpu", "main_gpu", "num_keep",
                     "seed", "num_predict", "top_k", "repeat_last_n", "mirostat"), INT),
    **dict.fromkeys(("temperature", "top_p", "min_p", "typical_p", "tfs_z", "repeat_penalty",
                     "presence_penalty", "frequency_penalty", "mirostat_tau", "mirostat_eta"),
                    FLOAT),
    **dict.fromkeys(("use_mmap", "use_mlock", "numa", "low_vram", "f16_kv", "vocab_only",
                     "penalize_newline", "logits_all", "embedding_only"), BOOL),
    "stop": ARRAY,
}
# Smallest meaningful value of an integer option and what the message says about it.
MINIMUM = {
    "num_ctx": (0, "must not be negative (0 means the model's default)"),
    "num_batch": (0, "must not be negative (0 means the default)"),
    "num_thread": (0, "must not be negative (0 means every core)"),
    "num_predict": (-2, "must be -1 (no limit), -2 (fill the context) or a count of tokens"),
    "repeat_last_n": (-1, "must be -1 (the whole context), 0 (off) or a count of tokens"),
    "mirostat": (0, "must be 0, 1 or 2"),
}
MAXIMUM = {"mirostat": (2, "must be 0, 1 or 2")}
PROBABILITIES = ("top_p", "min_p", "typical_p")
CEILINGS = ("num_ctx", "num_batch", "num_thread", "num_predict")  # lowered, never refused
INT32 = 2**31 - 1
FLOAT32 = 3.4e38
DEFAULT_BATCH = 512


def _bad(key, what):
    return ApiError(400, f"option {json.dumps(key)} {what}")


def _integer(key, value):
    # JSON has one number type: 2048.0 is 2048 (Ollama truncates any float; we refuse 1.5).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, "must be of type integer")
    low, why = MINIMUM.get(key, (None, ""))
    if low is not None and value < low:
        raise _bad(key, why)
    high, why = MAXIMUM.get(key, (None, ""))
    if high is not None and value > high:
        raise _bad(key, why)
    if key == "seed":  # Ollama hands llama.cpp a uint32; negative means a random seed
        return value if value < 0 else value & 0xFFFFFFFF
    return value if key in CEILINGS else max(-INT32 - 1, min(value, INT32))


def _float(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise _bad(key, "must be of type float32")
    return max(-FLOAT32, min(float(value), FLOAT32))


def _stop(key, value):
    if isinstance(value, str):  # one string: accepted, as a list of one
        return [value]
    if not isinstance(value, list):
        raise _bad(key, "must be of type array")
    if not all(isinstance(item, str) for item in value):
        raise _bad(key, "must be of an array of strings")
    return value


def check_options(options):
    """The options with their values checked; a 400 naming the first bad one."""
    if options is None:
        return {}
    checked = {}
    for key, value in options.items():
        kind = OPTION_TYPES.get(key)
        if kind is None or value is None:
            continue
        if kind == INT:
            value = _integer(key, value)
        elif kind == FLOAT:
            value = _float(key, value)
            if key in PROBABILITIES and not 0.0 <= value <= 1.0:
                # llama.cpp's typical sampler aborts the process on a negative one.
                raise _bad(key, "must be between 0 and 1")
        elif kind == BOOL and not isinstance(value, bool):
            raise _bad(key, "must be of type boolean")
        elif kind == ARRAY:
            value = _stop(key, value)
        checked[key] = value
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
