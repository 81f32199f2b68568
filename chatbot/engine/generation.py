"""From an Ollama request to tokens: prompt rendering, sampling options, the token loop.

We drive `Llama.generate` (one token per step) rather than `create_completion`, so that
the text streamed, the stop handling, the counts and the timings are exactly ours, and so
that closing our generator stops llama.cpp between two tokens.
"""
import codecs
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .gguf import token_text
from .limits import check_options
from .ollama_format import ApiError

# Ollama's api.DefaultOptions: the sampling a client gets when it sets nothing.
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
            "repeat_penalty": 1.1, "repeat_last_n": 64, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "mirostat": 0, "mirostat_tau": 5.0,
            "mirostat_eta": 0.1, "seed": -1, "num_predict": -1}
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
    """The prompt string for `messages` using the model's own (GGUF) chat template."""
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
    stop: list = field(default_factory=list)


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
                        mirostat_mode=int(merged["mirostat"]),
                        mirostat_tau=float(merged["mirostat_tau"]),
                        mirostat_eta=float(merged["mirostat_eta"]), grammar=grammar),
            seed=seed if seed >= 0 else random.randrange(2**31),
            num_predict=int(merged["num_predict"]), repeat_last_n=int(merged["repeat_last_n"]),
            stop=stop)
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


def capacity(llm):
    """Tokens the Llama can hold. llama.cpp pads n_ctx (128 -> 256) and n_ctx() reports
    the padded size, but llama-cpp-python sized its token arrays with the requested one."""
    return min(llm.n_ctx(), len(llm.input_ids))


def fit_context(tokens, n_ctx):
    """Keep the prompt's tail when it cannot fit, leaving room for one new token. Ollama
    truncates the same way instead of failing, keeping the first tokens (num_keep) so that
    a BOS survives; we keep one."""
    if len(tokens) < n_ctx:
        return tokens
    return tokens[:1] + tokens[len(tokens) - (n_ctx - 2):]


def _held_back(text, stops):
    """How many trailing characters could still become a stop sequence."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


def generate(llm, prompt_tokens, opts, stats, cancel=None):
    """Yield text pieces as tokens are sampled; fill `stats` as it goes.

    Close the generator (or set the `cancel` event) to stop early: llama.cpp is never left
    mid-token and the KV cache stays valid for the next prompt's prefix reuse.
    """
    import llama_cpp

    limit = capacity(llm) - len(prompt_tokens)  # never evaluate past the KV cache
    if opts.num_predict > 0:
        limit = min(limit, opts.num_predict)
    stats.prompt_eval_count = len(prompt_tokens)  # cached prefix or not, as Ollama reports
    vocab = llm._model.vocab
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # UTF-8 split across tokens
    llm.set_seed(opts.seed)
    # Ollama's repeat_last_n -1: the whole context.
    llm.last_n_tokens_size = opts.repeat_last_n if opts.repeat_last_n >= 0 else capacity(llm)
    pending, stop_hit, first = "", False, None
    started = time.perf_counter_ns()
    sampled = llm.generate(prompt_tokens, reset=True, **opts.kwargs)
    try:
        for token in sampled:
            if first is None:
                first = time.perf_counter_ns()
                stats.prompt_eval_duration = first - started
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                stats.done_reason = "stop"
                break
            stats.eval_count += 1
            stats.tokens.append(token)
            pending += decoder.decode(llm.detokenize([token]))
            hit = min((i for i in (pending.find(s) for s in opts.stop) if i >= 0), default=-1)
            if hit >= 0:
                pending, stop_hit = pending[:hit], True
                stats.done_reason = "stop"
                break
            keep = _held_back(pending, opts.stop) if opts.stop else 0
            out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
            if out:
                yield out
            if stats.eval_count >= limit:
                stats.done_reason = "length"
                break
            if cancel is not None and cancel.is_set():
                break
        if not stop_hit:  # bytes of an unfinished UTF-8 character, if any
            pending += decoder.decode(b"", final=True)
        if pending:
            yield pending
    finally:
        sampled.close()
        if first is not None:
            stats.eval_duration = time.perf_counter_ns() - first
