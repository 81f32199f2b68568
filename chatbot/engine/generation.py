"""From an Ollama request to tokens: prompt rendering, sampling options, the token loop.

We drive `Llama.generate` (one token per step) rather than `create_completion`, so that
the text streamed, the stop handling, the counts and the timings are exactly ours, and so
that closing our generator stops llama.cpp between two tokens.

Its size is earned: the token loop and the options it reads are one contract with Ollama's;
its helpers are small and private to it.
"""
import codecs
import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import tools as library_tools
from .gguf import token_text
from .limits import check_options
from .ollama_format import ApiError

# Ollama's api.DefaultOptions (api/types.go): the sampling a client gets when it sets
# nothing. Since 0.32.10 repeat_penalty is 1.0; mirostat, tfs_z and penalize_newline are no
# longer options at all.
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
            "repeat_penalty": 1.0, "repeat_last_n": 64, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "seed": -1, "num_predict": -1, "num_keep": 4}
# Ollama's texts (llm/llama_server.go): a prompt that cannot fit when context shift is off,
# and llama-server's refusal, which Ollama passes on as it is, when truncate is false.
PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the "
                   "model; shorten the prompt, adjust the context length in settings, or use a "
                   "model with a longer context length")
EXCEEDS_CONTEXT = ('{{"error":{{"code":400,"message":"request ({n} tokens) exceeds the available '
                   'context size ({ctx} tokens), try increasing it","type":'
                   '"exceed_context_size_error","n_prompt_tokens":{n},"n_ctx":{ctx}}}}}')
OPEN_ENDED_WINDOWS = 10  # Ollama bounds num_predict -1 to this many context windows
# Templates with no chat template in their GGUF: Ollama's default is the bare prompt.
FALLBACK_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@lru_cache(maxsize=16)
def _compiled(template):
    # Same environment as transformers' and llama-cpp-python's chat-template rendering.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False,
                                                                     indent=indent)
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _raise(message):
    raise jinja2.TemplateError(message)


def render_chat(info, messages, tools=None):
    """The prompt string for `messages` using the model's own (GGUF) chat template, or
    Ollama's library template where that one renders tools the GGUF's cannot (tools.py)."""
    if library_tools.uses_library_template(info, messages, tools):
        return library_tools.render(messages, tools)
    try:
        return _compiled(info.chat_template or FALLBACK_TEMPLATE).render(
            messages=messages, tools=tools or None, add_generation_prompt=True,
            bos_token=token_text(info, "tokenizer.ggml.bos_token_id"),
            eos_token=token_text(info, "tokenizer.ggml.eos_token_id"),
            raise_exception=_raise)
    except jinja2.TemplateError as exc:
        raise ApiError(400, f"template error: {exc}") from None
    except (TypeError, ValueError, LookupError, AttributeError, RecursionError) as exc:
        # A template meeting input it did not expect (tool calls of the wrong shape...).
        raise ApiError(400, f"template error: {type(exc).__name__}: {exc}") from None


def chat_prompt(llm, info, messages, tools=None, truncate=True):
    """The prompt for a chat, as Ollama's chatPrompt (server/prompt.go) builds it: with
    truncate, the oldest messages are left out until the rest fits the context, keeping the
    system messages and always the last message."""
    n_ctx = capacity(llm)
    for i in range(len(messages) if truncate else 1):
        system = [m for m in messages[:i] if m["role"] == "system"]
        prompt = render_chat(info, system + messages[i:], tools)
        if not truncate or i == len(messages) - 1 or \
                len(tokenize_prompt(llm, info, prompt)) <= n_ctx:
            return prompt


def tokenize_prompt(llm, info, prompt):
    """Tokens as llama.cpp would evaluate them: BOS when the vocab wants one, unless the
    template already wrote it (a second BOS degrades some models)."""
    bos = token_text(info, "tokenizer.ggml.bos_token_id")
    add_bos = not (bos and prompt.startswith(bos))
    return llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)


def context_text(llm, context):
    """The text of a generate request's `context` tokens. llama.cpp aborts the process on
    an id outside its vocabulary, so every id is checked against it first."""
    n_vocab = llm.n_vocab()
    bad = next((t for t in context if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise ApiError(400, f"invalid context: token {bad} is not in the model's vocabulary "
                            f"(0 to {n_vocab - 1})")
    return llm.detokenize(context, special=True).decode("utf-8", errors="replace")


@dataclass
class Sampling:
    kwargs: dict  # keyword arguments of Llama.generate
    seed: int
    num_predict: int
    repeat_last_n: int
    num_keep: int
    stop: list = field(default_factory=list)
    shift: bool = True  # the request's `shift`: make room when the context fills
    bos: bool = False  # the tokenizer adds a BOS (kept by a shift, as llama-server does)
    logprobs: bool = False
    top_logprobs: int = 0


def sampling(options, grammar=None):
    merged = {**DEFAULTS, **check_options(options)}
    try:
        stop = merged.get("stop") or []
        stop = [stop] if isinstance(stop, str) else [str(s) for s in stop if s]
        seed = int(merged["seed"])
        return Sampling(
            kwargs=dict(temp=float(merged["temperature"]), top_k=int(merged["top_k"]),
                        top_p=float(merged["top_p"]), min_p=float(merged["min_p"]),
                        typical_p=float(merged["typical_p"]),
                        repeat_penalty=float(merged["repeat_penalty"]),
                        presence_penalty=float(merged["presence_penalty"]),
                        frequency_penalty=float(merged["frequency_penalty"]),
                        grammar=grammar),
            seed=seed if seed >= 0 else random.randrange(2**31),
            num_predict=int(merged["num_predict"]), repeat_last_n=int(merged["repeat_last_n"]),
            num_keep=int(merged["num_keep"]), stop=stop)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"invalid options: {exc}") from None


def load_options(options):
    """num_ctx, num_thread and num_batch (None: the default): they shape the loaded model,
    not the sampling. The registry lowers them to the engine's ceilings."""
    options = check_options(options)
    return tuple(options.get(key) or None for key in ("num_ctx", "num_thread", "num_batch"))


@dataclass
class Stats:
    done_reason: str = "stop"
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    tokens: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # of the tokens whose text went out


def capacity(llm):
    """Tokens the Llama can hold. llama.cpp pads n_ctx (128 -> 256) and n_ctx() reports
    the padded size, but llama-cpp-python sized its token arrays with the requested one."""
    return min(llm.n_ctx(), len(llm.input_ids))


def keep_count(num_keep, n_tokens, bos):
    """Ollama's n_keep: num_keep tokens (all when negative), plus the BOS if the tokenizer
    adds one."""
    return (n_tokens if num_keep < 0 else num_keep) + (1 if bos else 0)


def fit_context(tokens, n_ctx, opts, truncate=True, bos=False):
    """The prompt as Ollama's runner hands it to llama-server (llm/llama_server.go,
    completionPromptForRequest). With truncate, a prompt that leaves no room for a token
    keeps its first n_keep tokens and its tail, half the rest of the context being freed
    for the reply, or is refused when context shift is off; without, llama-server refuses
    any prompt that fills the context."""
    if not truncate:
        if len(tokens) >= n_ctx:
            raise ApiError(400, EXCEEDS_CONTEXT.format(n=len(tokens), ctx=n_ctx))
        return tokens
    if len(tokens) <= n_ctx - 1:
        return tokens
    if not opts.shift:
        raise ApiError(400, PROMPT_TOO_LONG)
    keep = min(keep_count(opts.num_keep, len(tokens), bos), n_ctx - 1)
    limit = n_ctx - max((n_ctx - keep) // 2, 1)
    return tokens[:keep] + tokens[len(tokens) - (limit - keep):]


def shifted(tokens, keep):
    """llama-server's context shift: keep the first `keep`, drop half of the rest."""
    keep = min(keep, len(tokens) - 1)
    return tokens[:keep] + tokens[keep + (len(tokens) - keep) // 2:]


def _utf8_prefix(data):
    """llama.cpp's validate_utf8: the bytes without a multi-byte character cut at the end
    (a token can hold part of one)."""
    for i in range(1, min(4, len(data)) + 1):
        c = data[-i]
        if (c & 0xE0 == 0xC0 and i < 2) or (c & 0xF0 == 0xE0 and i < 3) or \
                (c & 0xF8 == 0xF0 and i < 4):
            return data[:-i]
    return data


def _piece(llm, token):
    """The token's text as llama.cpp spells it, special tokens included. (LlamaModel's
    token_to_piece returns its whole buffer, NULs and all.)"""
    import ctypes

    import llama_cpp

    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buf, size, 0, True)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def _token_logprob(llm, token, logprob):
    """Ollama's TokenLogprob: llama-server's token text, and its UTF-8 bytes (omitted when
    empty)."""
    text = _utf8_prefix(_piece(llm, token)).decode("utf-8", errors="replace")
    entry = {"token": text, "logprob": logprob}
    if text:
        entry["bytes"] = list(text.encode("utf-8"))
    return entry


def logprob_entry(llm, token, top):
    """Ollama's Logprob for the token just sampled: log-softmax of the raw logits that
    produced it (llama-server's n_probs, before any sampler), and the `top` most likely."""
    import llama_cpp
    import numpy as np

    n_vocab = llm.n_vocab()
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1),
                                   shape=(n_vocab,)).astype(np.float64)
    peak = logits.max()
    logprobs = logits - (peak + math.log(np.exp(logits - peak).sum()))
    entry = _token_logprob(llm, token, float(logprobs[token]))
    if top > 0:
        best = np.argpartition(-logprobs, min(top, n_vocab - 1))[:top]
        best = sorted(best.tolist(), key=lambda t: (-logprobs[t], t))
        entry["top_logprobs"] = [_token_logprob(llm, t, float(logprobs[t])) for t in best]
    return entry


def _held_back(text, stops):
    """How many trailing characters could still become a stop sequence."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def _sampled(llm, prompt_tokens, opts, stats):
    """The tokens llama.cpp samples. When the context is full, with `shift` it is shifted
    as llama-server shifts it (n_keep tokens kept, half the rest dropped; llama.cpp
    re-evaluates what follows the kept prefix) and sampling goes on; without, generation
    ends with done_reason "length"."""
    n_ctx = capacity(llm)
    context = list(prompt_tokens)
    while True:
        sampled = llm.generate(context, reset=True, **opts.kwargs)
        try:
            for token in sampled:
                yield token
                context.append(token)
                if len(context) >= n_ctx:
                    break
            else:
                return
        finally:
            sampled.close()
        # A new generate would restart a grammar from its first rule: stop instead.
        if not opts.shift or opts.kwargs.get("grammar") is not None:
            stats.done_reason = "length"
            return
        context = shifted(context, keep_count(opts.num_keep, len(prompt_tokens), opts.bos))


def generate(llm, prompt_tokens, opts, stats, cancel=None):
    """Yield text pieces as tokens are sampled; fill `stats` as it goes (with logprobs,
    the tokens' entries join stats.logprobs as their text is yielded).

    Close the generator (or set the `cancel` event) to stop early: llama.cpp is never left
    mid-token and the KV cache stays valid for the next prompt's prefix reuse.
    """
    import llama_cpp

    stats.prompt_eval_count = len(prompt_tokens)  # cached prefix or not, as Ollama reports
    vocab = llm._model.vocab
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # UTF-8 split across tokens
    llm.set_seed(opts.seed)
    # Ollama's repeat_last_n -1: the whole context.
    llm.last_n_tokens_size = opts.repeat_last_n if opts.repeat_last_n >= 0 else capacity(llm)
    pending, stop_hit, first, waiting = "", False, None, []
    started = time.perf_counter_ns()
    sampled = _sampled(llm, prompt_tokens, opts, stats)
    try:
        for token in sampled:
            if first is None:
                first = time.perf_counter_ns()
                stats.prompt_eval_duration = first - started
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                stats.done_reason = "stop"
                break
            # Now, while llama.cpp still holds the logits this token was sampled from.
            entry = logprob_entry(llm, token, opts.top_logprobs) if opts.logprobs else None
            stats.eval_count += 1
            stats.tokens.append(token)
            pending += decoder.decode(llm.detokenize([token]))
            hit = min((i for i in (pending.find(s) for s in opts.stop) if i >= 0), default=-1)
            if hit >= 0:
                pending, stop_hit = pending[:hit], True
                stats.done_reason = "stop"
                break
            if entry:
                waiting.append(entry)
            keep = _held_back(pending, opts.stop) if opts.stop else 0
            out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
            if out:
                stats.logprobs += waiting
                waiting = []
                yield out
            if 0 < opts.num_predict <= stats.eval_count:
                stats.done_reason = "length"
                break
            if cancel is not None and cancel.is_set():
                break
        if not stop_hit:  # bytes of an unfinished UTF-8 character, if any
            pending += decoder.decode(b"", final=True)
        if pending:
            stats.logprobs += waiting
            yield pending
    finally:
        sampled.close()
        if first is not None:
            stats.eval_duration = time.perf_counter_ns() - first
