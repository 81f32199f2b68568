"""The engine's pure helpers: Ollama's duration and number formats, stop-sequence hold-back,
the prompt cut and context shift, think values, the GGUF reader. No engine process needed."""
import json

import pytest

from chatbot.engine.completions import think_flag
from chatbot.engine.generation import (PROMPT_TOO_LONG, Sampling, _held_back, _utf8_prefix,
                                       fit_context, shifted)
from chatbot.engine.gguf import read_gguf
from chatbot.engine.models import canonical
from chatbot.engine.ollama_format import ApiError, human_number, keep_alive_seconds


@pytest.mark.parametrize("value, seconds", [
    (None, None), (-1, None), ("-1m", None), (0, 0), ("0", 0), (300, 300), ("5m", 300),
    ("1h30m", 5400), ("1.5s", 1.5), ("250ms", 0.25),
])
def test_keep_alive_like_ollama(value, seconds):
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m5", [1], True])
def test_keep_alive_rejects_nonsense(value):
    with pytest.raises(ApiError) as exc:
        keep_alive_seconds(value)
    assert exc.value.status == 400


@pytest.mark.parametrize("n, text", [(134515008, "134.52M"), (8030261248, "8.0B"),
                                     (7000000000, "7B"), (135000000, "135M"), (999, "999")])
def test_parameter_size_like_ollama(n, text):
    assert human_number(n) == text


def test_stop_sequences_hold_back_only_possible_prefixes():
    assert _held_back("Hello wor", ["world"]) == 3
    assert _held_back("Hello", ["world"]) == 0
    assert _held_back("a <|e", ["<|end|>", "xyz"]) == 3


def opts(num_keep=3, shift=True):
    return Sampling(kwargs={}, seed=0, num_predict=-1, repeat_last_n=64, num_keep=num_keep,
                    shift=shift)


def test_fit_context_cuts_as_ollama_runner():
    """llm/llama_server_test.go's cases: a prompt with room for one token is left alone;
    a longer one keeps num_keep tokens and the tail, half of the rest being freed."""
    assert fit_context(list(range(7)), 8, opts()) == list(range(7))
    assert fit_context(list(range(10)), 8, opts()) == [0, 1, 2, 7, 8, 9]
    assert fit_context(list(range(10)), 8, opts(), bos=True) == [0, 1, 2, 3, 8, 9]
    assert len(fit_context(list(range(5000)), 4096, opts(4))) == 2050
    assert len(fit_context(list(range(5000)), 4096, opts(4), bos=True)) == 2051
    assert fit_context(list(range(10)), 8, opts(99)) == list(range(7))  # keep < n_ctx
    assert fit_context(list(range(10)), 8, opts(-1)) == list(range(7))  # -1: everything


def test_fit_context_refusals():
    with pytest.raises(ApiError) as exc:
        fit_context(list(range(8)), 8, opts(shift=False))
    assert (exc.value.status, exc.value.message) == (400, PROMPT_TOO_LONG)
    assert fit_context(list(range(7)), 8, opts(shift=False)) == list(range(7))
    with pytest.raises(ApiError) as exc:  # truncate false: llama-server's own refusal
        fit_context(list(range(8)), 8, opts(), truncate=False)
    assert exc.value.status == 400
    assert json.loads(exc.value.message)["error"]["message"] == \
        "request (8 tokens) exceeds the available context size (8 tokens), try increasing it"
    assert fit_context(list(range(7)), 8, opts(), truncate=False) == list(range(7))


def test_context_shift_keeps_n_keep_and_drops_half_the_rest():
    assert shifted(list(range(12)), 4) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert shifted(list(range(12)), 0) == list(range(6, 12))


def test_cut_utf8_is_dropped_as_llama_server_does():
    assert _utf8_prefix("é".encode()) == "é".encode()
    assert _utf8_prefix(b"a\xe2\x82") == b"a" and _utf8_prefix(b"\xf0") == b""
    assert _utf8_prefix(b"\x80") == b"\x80"  # a lone continuation byte is not cut


@pytest.mark.parametrize("value, thinks", [(None, False), (False, False), (True, True),
                                           ("low", True), ("max", True)])
def test_think_values(value, thinks):
    assert think_flag({"think": value}) is thinks


@pytest.mark.parametrize("value, text", [
    ("extreme", 'invalid think value: "extreme" (must be "high", "medium", "low", "max", '
                'true, or false)'),
    ("", 'invalid think value: "" (must be "high", "medium", "low", "max", true, or false)'),
    (3, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
    ({"level": "high"}, 'think must be a boolean or string ("high", "medium", "low", "max", '
                        'true, or false)'),
])
def test_bad_think_values_are_ollamas_decoding_errors(value, text):
    with pytest.raises(ApiError) as exc:
        think_flag({"think": value})
    assert (exc.value.status, exc.value.message) == (400, text)


def test_names_match_with_latest_tag():
    assert canonical("Tiny") == canonical("tiny:latest")
    assert canonical("smollm2:135m") != canonical("smollm2")
    assert canonical("host:5000/ns/model") == "host:5000/ns/model:latest"


def test_gguf_reader_types_and_parameter_count(model_path):
    info = read_gguf(model_path)
    assert info.parameter_count == 134515008 and info.tensor_count == 272
    assert info.metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-05
    assert info.metadata["tokenizer.ggml.add_bos_token"] is False
    assert len(info.metadata["tokenizer.ggml.tokens"]) == 49152
    assert info.metadata["tokenizer.ggml.merges"] is None
    assert (info.architecture, info.context_length, info.quantization_level) == \
        ("llama", 8192, "Q4_1")
