"""/api/chat and /api/generate: one generation at a time, streamed token by token.

Its size is earned: chat and generate share Run (the stream, the stop, the prompt cache's
bookkeeping); apart, they would copy it."""
import json
import time
from dataclasses import dataclass

from flask import Blueprint, Response, jsonify

from . import generation, tools as library_tools
from .grammar import check_builds, grammar_for
from .ollama_format import (ApiError, final_chunk, json_line, keep_alive_seconds, piece_chunk)
from .limits import check_options
from .parsing import (chat_messages, context_ids, engine, images, integer, read_body,
                      require_model, stream_flag, typed)
from .toolcalls import Parser, call_id

bp = Blueprint("engine_completions", __name__)
NDJSON = "application/x-ndjson"


def supports_tools(info):
    """Ollama's test: the template can render tool definitions (ours for SmolLM2's)."""
    return "tools" in info.chat_template or library_tools.library_template_applies(info)


def capabilities(info):
    """Ollama's: a GGUF naming a pooling type is an embedding model (all-minilm), and only
    that; any other can complete."""
    if info.arch_value("pooling_type") is not None:
        return ["embedding"]
    return ["completion"] + (["tools"] if supports_tools(info) else [])


class Run:
    """One generation request: holds the engine lock from start() until finish()."""

    def __init__(self, kind, name, model, options, keep_alive, build_prompt, grammar=None,
                 flags=None):
        self.kind, self.name, self.model = kind, name, model
        self.options, self.keep_alive = options, keep_alive
        self.build_prompt, self.grammar = build_prompt, grammar
        self.flags = flags or Flags()
        self.parser = None  # a toolcalls.Parser when the chat offers tools
        self.received = time.perf_counter_ns()
        self.engine = engine()
        self.stats = generation.Stats()
        self.tokens = []
        self.load_duration = 0
        self._locked = False

    def start(self):
        """Everything that can fail with a proper status: lock, load, render, tokenize."""
        opts = generation.sampling(self.options, self.grammar)
        opts.shift, opts.logprobs = self.flags.shift, self.flags.logprobs
        opts.top_logprobs = self.flags.top_logprobs
        num_ctx, num_thread, num_batch = generation.load_options(self.options)
        self.engine.lock.acquire()
        self._locked = True
        try:
            registry = self.engine.registry
            registry.sweep()
            self.llm, self.load_duration = registry.load_chat(self.model, num_ctx, num_thread,
                                                              num_batch)
            check_builds(self.llm, self.grammar)
            info = registry.info(self.model)
            n_ctx = generation.capacity(self.llm)
            opts.num_predict = registry.limits.predict(opts.num_predict)
            # Ollama's boundedNumPredict: open-ended generation, shifting, stops somewhere
            # (0 too: without a bound it would never end).
            bound = generation.OPEN_ENDED_WINDOWS * n_ctx
            if opts.num_predict <= 0 or opts.num_predict > bound:
                opts.num_predict = bound
            opts.bos = bool(info.metadata.get("tokenizer.ggml.add_bos_token"))
            prompt = self.build_prompt(self.llm, info, self.flags.truncate)
            tokens = generation.tokenize_prompt(self.llm, info, prompt)
            self.tokens = generation.fit_context(tokens, n_ctx, opts, self.flags.truncate,
                                                 opts.bos)
            registry.prompts.restore(self.llm, self.tokens)
            self.opts = opts
        except BaseException:
            self.finish()
            raise
        return self

    def pieces(self):
        clean = False  # llama.cpp's context holds whole tokens: worth keeping for later turns
        try:
            yield from generation.generate(self.llm, self.tokens, self.opts, self.stats,
                                           self.engine.stopping)
            clean = True
        except GeneratorExit:  # the client left: generate() stopped between two tokens
            clean = True
            raise
        finally:
            try:
                if clean:
                    self.engine.registry.prompts.save(self.llm)
            finally:
                self.finish()

    def replies(self):
        """(content, tool_calls) for each piece: the reply as the tools parser reads it, when
        there is one (it may hold text back, so a piece can be empty)."""
        pieces = self.pieces()
        try:
            for piece in pieces:
                if self.parser is None:
                    yield piece, []
                    continue
                calls, content = self.parser.add(piece)
                yield content, [{"id": call_id(), **call} for call in calls]
            if self.parser is not None:
                yield self.parser.finish(), []
        finally:
            pieces.close()

    def finish(self):
        if self._locked:
            self._locked = False
            try:
                self.engine.registry.touch(self.model, self.keep_alive)
            finally:
                self.engine.lock.release()

    def final(self, text, logprobs=None, tool_calls=None):
        stats = dict(vars(self.stats), total_duration=time.perf_counter_ns() - self.received,
                     load_duration=self.load_duration)
        context = self.tokens + self.stats.tokens if self.kind == "generate" else None
        return final_chunk(self.kind, self.name, text, stats, context, logprobs, tool_calls)


class StreamBody:
    """The NDJSON body. werkzeug calls close() when the client goes away mid-stream (the
    write fails), which stops llama.cpp and frees the lock before the next token."""

    def __init__(self, run):
        self.run = run
        self._pieces = run.replies()
        self._lines = self._generate()

    def __iter__(self):
        return self._lines

    def _generate(self):
        logprobs = self.run.stats.logprobs
        try:
            sent = 0
            # Each piece with the logprobs of its tokens; while the tools parser holds text
            # back, the logprobs go alone, as Ollama sends them.
            for piece, calls in self._pieces:
                if piece or calls or logprobs[sent:]:
                    yield json_line(piece_chunk(self.run.kind, self.run.name, piece,
                                                logprobs[sent:], calls))
                sent = len(logprobs)
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
    with eng.lock:
        if keep_alive == 0:
            eng.registry.unload(model)
            reason = "unload"
        else:
            num_ctx, num_thread, num_batch = generation.load_options(options)
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
    text, calls = "", []
    for piece, found in run.replies():
        text += piece
        calls += found
    return jsonify(run.final(text, run.stats.logprobs, calls))


@dataclass
class Flags:
    """A request's truncate, shift (absent: true), logprobs and top_logprobs."""
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0


THINK_LEVELS = ("high", "medium", "low", "max")


def think_flag(body):
    """api.ThinkValue as Go decodes it: a bool or one of the levels; anything else fails
    the decoding, with ThinkValue.UnmarshalJSON's texts (api/types.go)."""
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise ApiError(400, f"invalid think value: {json.dumps(value, ensure_ascii=False)} "
                                '(must be "high", "medium", "low", "max", true, or false)')
        return True
    raise ApiError(400, 'think must be a boolean or string ("high", "medium", "low", "max", '
                        "true, or false)")


def _common(body, struct, kind, empty):
    """Ollama's checks in its order (server/routes.go): the body's types, top_logprobs,
    the model, an unload (no prompt, keep_alive 0: before anything else is checked),
    thinking, the capability, then the options."""
    think = think_flag(body)
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    stream = stream_flag(body, struct)
    flags = Flags(logprobs=bool(typed(body, "logprobs", bool, "bool", struct)),
                  top_logprobs=integer(body, "top_logprobs", struct))
    for key in ("truncate", "shift"):
        if typed(body, key, bool, "bool", struct) is False:
            setattr(flags, key, False)
    if not 0 <= flags.top_logprobs <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    name, model = require_model(body, struct)
    if empty and keep_alive == 0:
        return name, model, None, keep_alive, stream, flags
    if think:  # no GGUF we serve can think: anything but false is refused, as Ollama does
        raise ApiError(400, f'"{name}" does not support thinking')
    if "completion" not in capabilities(engine().registry.info(model)):
        raise ApiError(400, f'"{name}" does not support {kind}')  # Ollama's, empty prompt too
    options = check_options(typed(body, "options", dict, "map[string]interface {}", struct))
    return name, model, options, keep_alive, stream, flags


@bp.post("/api/chat")
def chat():
    body = read_body("ChatRequest")
    messages = chat_messages(body)
    name, model, options, keep_alive, stream, flags = _common(body, "ChatRequest", "chat",
                                                               not messages)
    if not messages:  # Ollama loads before it looks at the format
        return _load_only("chat", name, model, keep_alive, stream, options)
    grammar = grammar_for(body.get("format"))
    tools = typed(body, "tools", list, "api.Tools", "ChatRequest")
    if tools and not supports_tools(engine().registry.info(model)):
        raise ApiError(400, f'"{name}" does not support tools')

    def build_prompt(llm, info, truncate):
        return generation.chat_prompt(llm, info, messages, tools, truncate)

    run = Run("chat", name, model, options, keep_alive, build_prompt, grammar, flags)
    tag = library_tools.tag_for(engine().registry.info(model)) if tools else None
    if tag:  # Ollama's tools parser, for any request offering tools
        run.parser = Parser(tools, tag)
    return _respond(run, stream)


@bp.post("/api/generate")
def generate():
    body = read_body("GenerateRequest")
    prompt = typed(body, "prompt", str, "string", "GenerateRequest") or ""
    name, model, options, keep_alive, stream, flags = _common(body, "GenerateRequest",
                                                               "generate", not prompt)
    system = typed(body, "system", str, "string", "GenerateRequest") or ""
    raw = bool(typed(body, "raw", bool, "bool", "GenerateRequest"))
    context = context_ids(body)
    images(body, "GenerateRequest")  # checked, then ignored: no vision models
    if not prompt:
        return _load_only("generate", name, model, keep_alive, stream, options)
    grammar = grammar_for(body.get("format"))

    def build_prompt(llm, info, truncate):
        if raw:
            text = prompt
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": prompt}]
            text = generation.render_chat(info, messages)
        if context:  # a previous reply's context: its text goes first, as in Ollama
            text = generation.context_text(llm, context) + text
        return text

    return _respond(Run("generate", name, model, options, keep_alive, build_prompt, grammar,
                        flags), stream)
