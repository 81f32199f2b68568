"""The engine's pure helpers: Ollama's duration and number formats, stop-sequence hold-back,
the GGUF reader. No engine process needed."""
import pytest

from chatbot.engine.generation import _held_back, fit_context
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


def test_fit_context_keeps_first_token_and_tail():
    assert fit_context([1, 2, 3], 8) == [1, 2, 3]
    assert fit_context(list(range(10)), 6) == [0, 6, 7, 8, 9]


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
