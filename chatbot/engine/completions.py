"""/api/chat and /api/generate: one generation at a time, streamed token by token."""
import json
import time
from functools import lru_cache

from flask import Blueprint, Response, jsonify

from . import generation
from .ollama_format import (ApiError, final_chunk, json_line, keep_alive_seconds, piece_chunk)
from .limits import check_options
from .parsing import (chat_messages, context_ids, engine, images, read_body, require_model,
                      stream_flag, typed)

bp = Blueprint("engine_completions", __name__)
NDJSON = "application/x-ndjson"


@lru_cache(maxsize=8)
def _grammar(spec):
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if spec == '"json"':
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_json_schema(spec, verbose=False)


def grammar_for(fmt):
    """Ollama's `format`: "json" or a JSON schema, enforced with a llama.cpp grammar."""
    if fmt in (None, ""):
        return None
    if fmt != "json" and not isinstance(fmt, dict):
        raise ApiError(400, f"invalid format: {json.dumps(fmt)}")
    try:
        return _grammar(json.dumps(fmt, sort_keys=True))
    except Exception as exc:  # llama.cpp rejects some schemas; that is the client's input
        raise ApiError(400, f"invalid JSON schema in format: {exc}") from None


def supports_tools(info):
    """Ollama's test: the template can render tool definitions."""
    return "tools" in info.chat_template


def capabilities(info):
    """Ollama's: a GGUF naming a pooling type is an embedding model (all-minilm), and only
    that; any other can complete."""
    if info.arch_value("pooling_type") is not None:
        return ["embedding"]
    return ["completion"] + (["tools"] if supports_tools(info) else [])


class Run:
    """One generation request: holds the engine lock from start() until finish()."""

    def __init__(self, kind, name, model, options, keep_alive, build_prompt, grammar=None):
        self.kind, self.name, self.model = kind, name, model
        self.options, self.keep_alive = options, keep_alive
        self.build_prompt, self.grammar = build_prompt, grammar
        self.received = time.perf_counter_ns()
        self.engine = engine()
        self.stats = generation.Stats()
        self.tokens = []
        self.load_duration = 0
        self._locked = False

    def start(self):
        """Everything that can fail with a proper status: lock, load, render, tokenize."""
        opts = generation.sampling(self.options, self.grammar)
        num_ctx, num_thread, num_batch = generation.load_options(self.options)
        self.engine.lock.acquire()
        self._locked = True
        try:
            registry = self.engine.registry
            registry.sweep()
            self.llm, self.load_duration = registry.load_chat(self.model, num_ctx, num_thread,
                                                              num_batch)
            opts.num_predict = registry.limits.predict(opts.num_predict)
            prompt = self.build_prompt(self.llm, registry.info(self.model))
            tokens = generation.tokenize_prompt(self.llm, registry.info(self.model), prompt)
            self.tokens = generation.fit_context(tokens, generation.capacity(self.llm))
            self.opts = opts
        except BaseException:
            self.finish()
            raise
        return self

    def pieces(self):
        try:
            yield from generation.generate(self.llm, self.tokens, self.opts, self.stats,
                                           self.engine.stopping)
        finally:
            self.finish()

    def finish(self):
        if self._locked:
            self._locked = False
            try:
                self.engine.registry.touch(self.model, self.keep_alive)
            finally:
                self.engine.lock.release()

    def final(self, text):
        stats = dict(vars(self.stats), total_duration=time.perf_counter_ns() - self.received,
                     load_duration=self.load_duration)
        context = self.tokens + self.stats.tokens if self.kind == "generate" else None
        return final_chunk(self.kind, self.name, text, stats, context)


class StreamBody:
    """The NDJSON body. werkzeug calls close() when the client goes away mid-stream (the
    write fails), which stops llama.cpp and frees the lock before the next token."""

    def __init__(self, run):
        self.run = run
        self._pieces = run.pieces()
        self._lines = self._generate()

    def __iter__(self):
        return self._lines

    def _generate(self):
        try:
            for piece in self._pieces:
                yield json_line(piece_chunk(self.run.kind, self.run.name, piece))
            yield json_line(self.run.final(""))
        except Exception as exc:  # the status line is gone: report in-band, as Ollama does
            yield json_line({"error": str(exc) or type(exc).__name__})

    def close(self):
        self._lines.close()
        self._pieces.close()
        self.run.finish()


def _load_only(kind, name, model, keep_alive, stream, options):
    """Empty prompt/messages: load (or with keep_alive 0, unload) the model, generate nothing."""
    eng = engine()
    num_ctx, num_thread, num_batch = generation.load_options(options)
    with eng.lock:
        if keep_alive == 0:
            eng.registry.unload(model)
            reason = "unload"
        else:
            eng.registry.load_chat(model, num_ctx, num_thread, num_batch)
            eng.registry.touch(model, keep_alive)
            reason = "load"
    chunk = final_chunk(kind, name, "", {"done_reason": reason})
    if stream:
        return Response(json_line(chunk), mimetype=NDJSON)
    return jsonify(chunk)


def _respond(run, stream):
    run.start()
    if stream:
        return Response(StreamBody(run), mimetype=NDJSON)
    text = "".join(run.pieces())
    return jsonify(run.final(text))


def _common(body, struct, kind):
    name, model = require_model(body, struct)
    if body.get("think") not in (None, False, ""):  # no GGUF we serve has a thinking parser
        raise ApiError(400, f'"{name}" does not support thinking')
    if "completion" not in capabilities(engine().registry.info(model)):
        raise ApiError(400, f'"{name}" does not support {kind}')  # Ollama's, empty prompt too
    options = check_options(typed(body, "options", dict, "map[string]interface {}", struct))
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    return name, model, options, keep_alive, stream_flag(body, struct)


@bp.post("/api/chat")
def chat():
    body = read_body("ChatRequest")
    name, model, options, keep_alive, stream = _common(body, "ChatRequest", "chat")
    messages = chat_messages(body)
    grammar = grammar_for(body.get("format"))
    if not messages:
        return _load_only("chat", name, model, keep_alive, stream, options)
    tools = typed(body, "tools", list, "api.Tools", "ChatRequest")
    if tools and not supports_tools(engine().registry.info(model)):
        raise ApiError(400, f'"{name}" does not support tools')

    def build_prompt(llm, info):
        return generation.render_chat(info, messages, tools)

    return _respond(Run("chat", name, model, options, keep_alive, build_prompt, grammar), stream)


@bp.post("/api/generate")
def generate():
    body = read_body("GenerateRequest")
    name, model, options, keep_alive, stream = _common(body, "GenerateRequest", "generate")
    prompt = typed(body, "prompt", str, "string", "GenerateRequest") or ""
    system = typed(body, "system", str, "string", "GenerateRequest") or ""
    raw = bool(typed(body, "raw", bool, "bool", "GenerateRequest"))
    context = context_ids(body)
    images(body, "GenerateRequest")  # checked, then ignored: no vision models
    grammar = grammar_for(body.get("format"))
    if not prompt:
        return _load_only("generate", name, model, keep_alive, stream, options)

    def build_prompt(llm, info):
        if raw:
            text = prompt
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": prompt}]
            text = generation.render_chat(info, messages)
        if context:  # a previous reply's context: its text goes first, as in Ollama
            text = generation.context_text(llm, context) + text
        return text

    return _respond(Run("generate", name, model, options, keep_alive, build_prompt, grammar),
                    stream)
