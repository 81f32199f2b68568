"""A request's `options`, read by Ollama's own rules (api/types.go, Options.FromMap), for the
web and the bundled engine alike:

- a null value is skipped, as if the option were absent (clients send every option they
  have a field for, unset ones as null);
- an unknown name (a misspelling, or one Ollama removed: mirostat, tfs_z, low_vram...) is
  logged and ignored, never refused;
- an integer option takes any number, truncated toward zero as Go's int64() does (2048.7 is
  2048, -1.5 is -1);
- a value of the wrong type is a 400 with Ollama's text (`option "top_k" must be of type
  integer`, `... of type float32`, `... of type boolean`, `... of type array`,
  `... must be of an array of strings`).

On top of Ollama's types, chatbot's own guards, checked before a request is queued and again
by the engine: llama.cpp aborts the process on a negative typical_p, and some integers have
no meaning below a floor. Pure Python: the engine imports nothing of the product, and the
product imports this.
"""
import json
import logging
import math

log = logging.getLogger(__name__)

INT, FLOAT, BOOL, ARRAY = "integer", "float32", "boolean", "array"
# api.Options and api.Runner, by JSON name (Ollama v0.33: main_gpu and use_mmap are pointers,
# which read the same way).
TYPES = {
    **dict.fromkeys(("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx",
                     "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict"), INT),
    **dict.fromkeys(("top_p", "min_p", "typical_p", "temperature", "repeat_penalty",
                     "presence_penalty", "frequency_penalty"), FLOAT),
    "use_mmap": BOOL,
    "stop": ARRAY,
}
# chatbot's guards: the smallest meaningful value of an integer option, and what it means.
MINIMUM = {
    "num_ctx": (0, "must not be negative (0 means the model's default)"),
    "num_batch": (0, "must not be negative (0 means the default)"),
    "num_thread": (0, "must not be negative (0 means every core)"),
    "num_predict": (-2, "must be -1 (no limit), -2 (fill the context) or a count of tokens"),
    "repeat_last_n": (-1, "must be -1 (the whole context), 0 (off) or a count of tokens"),
}
PROBABILITIES = ("top_p", "min_p", "typical_p")
INT64 = 2**63
FLOAT32 = 3.4028234663852886e38  # a float32 holds no more


class OptionError(ValueError):
    """A bad option: str(error) is Ollama's text, answered with status 400."""


def read(options):
    """The options Ollama knows, with their values read as Ollama reads them (nulls and
    unknown names left out); OptionError naming the first bad one."""
    if not options:
        return {}
    checked = {}
    for key, value in options.items():
        kind = TYPES.get(key)
        if kind is None:
            log.warning("invalid option provided: %s", key)  # Ollama's warning
            continue
        if value is None:
            continue
        checked[key] = _READERS[kind](key, value)
        _guard(key, checked[key])
    return checked


def forwarded(options):
    """What goes upstream: every option the client sent (an upstream newer than us may know
    more), nulls left out, the known ones as `read` makes them."""
    known = read(options)
    return {**{k: v for k, v in (options or {}).items() if v is not None}, **known}


def _bad(key, what):
    return OptionError(f"option {json.dumps(key)} {what}")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(key, value):
    if not _number(value):
        raise _bad(key, "must be of type integer")
    if isinstance(value, float):
        if math.isnan(value):
            raise _bad(key, "must be of type integer")
        value = int(value) if math.isfinite(value) else (INT64 - 1 if value > 0 else -INT64)
    return max(-INT64, min(value, INT64 - 1))


def _float(key, value):
    if not _number(value) or (isinstance(value, float) and math.isnan(value)):
        raise _bad(key, "must be of type float32")
    return max(-FLOAT32, min(float(min(max(value, -INT64), INT64)), FLOAT32))


def _bool(key, value):
    if not isinstance(value, bool):
        raise _bad(key, "must be of type boolean")
    return value


def _array(key, value):
    if not isinstance(value, list):
        raise _bad(key, "must be of type array")
    if not all(isinstance(item, str) for item in value):
        raise _bad(key, "must be of an array of strings")
    return value


_READERS = {INT: _integer, FLOAT: _float, BOOL: _bool, ARRAY: _array}


def _guard(key, value):
    low, why = MINIMUM.get(key, (None, ""))
    if low is not None and value < low:
        raise _bad(key, why)
    if key in PROBABILITIES and not 0.0 <= value <= 1.0:
        raise _bad(key, "must be between 0 and 1")
