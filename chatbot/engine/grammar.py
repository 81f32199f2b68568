"""Ollama's `format` as a llama.cpp grammar, bounded so that no schema can crash the engine.

Three guards, cheapest first:
- the schema's repetitions, enums and nesting (chatbot.engine.schema_limits, which the web
  applies too, before a request is queued);
- the grammar text llama-cpp-python writes: its size, and how deep its groups nest, since
  llama.cpp's parser recurses once per group (20,000 deep overflowed the stack, SIGSEGV);
- a test build with llama.cpp itself, under the engine lock: a grammar it cannot parse comes
  back as a null sampler, which llama-cpp-python would then use (SIGSEGV); here it is a 400.
"""
import json
from functools import lru_cache

from .ollama_format import ApiError
from .schema_limits import Bounds, SchemaError

BOUNDS = Bounds.from_env()
MAX_GRAMMAR_CHARS = 512 * 1024
MAX_GRAMMAR_DEPTH = 1200  # llama.cpp refused 2,000 cleanly and overflowed its stack at 20,000


@lru_cache(maxsize=8)
def _grammar(spec):
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if spec == '"json"':
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_json_schema(spec, verbose=False)


def grammar_for(fmt):
    """Ollama's `format`: "json" or a JSON schema, as a llama.cpp grammar (None: no format)."""
    if fmt in (None, ""):
        return None
    if fmt != "json" and not isinstance(fmt, dict):
        raise ApiError(400, f"invalid format: {json.dumps(fmt)}")
    try:
        BOUNDS.check(fmt)
    except SchemaError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        grammar = _grammar(json.dumps(fmt, sort_keys=True))
    except Exception as exc:  # llama.cpp rejects some schemas; that is the client's input
        raise ApiError(400, f"invalid JSON schema in format: {exc}") from None
    text = grammar._grammar
    if len(text) > MAX_GRAMMAR_CHARS or _depth(text) > MAX_GRAMMAR_DEPTH:
        raise ApiError(400, "invalid format: the schema makes a grammar too large for llama.cpp")
    return grammar


def check_builds(llm, grammar):
    """A 400 unless llama.cpp can build a sampler from `grammar` for this model."""
    if grammar is None:
        return
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar._grammar.encode(),
                                                   grammar._root.encode())
    if not sampler:
        raise ApiError(400, "invalid format: llama.cpp could not build a grammar from it")
    llama_cpp.llama_sampler_free(sampler)


def _depth(text):
    """How deep the grammar's groups nest (parentheses outside quotes and character sets)."""
    depth = deepest = 0
    quoted = bracket = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif bracket:
            bracket = ch != "]"
        elif ch == '"':
            quoted = True
        elif ch == "[":
            bracket = True
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest
