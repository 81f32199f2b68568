"""#23: no `format` crashes the engine. Each schema family that once made llama.cpp's grammar
parser recurse past its stack, or fail and leave a null grammar behind, is a 400 now, and the
engine answers the next request."""
import pytest
import requests

from chatbot.engine.grammar import MAX_GRAMMAR_DEPTH, _depth, check_builds, grammar_for
from chatbot.engine.ollama_format import ApiError

MODEL = "smollm2:135m"
HI = [{"role": "user", "content": "Hi"}]


def nested(depth):
    schema = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize("schema", [
    {"type": "string", "maxLength": 100000},  # 39 bytes: this crashed the engine
    {"type": "string", "minLength": 20000},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 50000},
    {"type": "array", "items": {"type": "integer"}, "minItems": 50000},
    {"type": "object", "maxProperties": 100000},
    {"type": "string", "pattern": "^a{1,100000}$"},
    {"enum": list(range(5000))},
    nested(45),
])
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_unbounded_schemas_are_400_and_the_engine_lives(engine, schema, path):
    r = requests.post(engine + path, timeout=60, json={
        "model": MODEL, "messages": HI, "prompt": "Hi", "stream": False, "format": schema,
        "options": {"num_predict": 2}})
    assert r.status_code == 400 and r.json()["error"].startswith("invalid format"), r.text
    after = requests.post(engine + "/api/chat", timeout=60, json={
        "model": MODEL, "messages": HI, "stream": False, "options": {"num_predict": 2}})
    assert after.status_code == 200 and after.json()["done"]


def test_a_bounded_schema_is_served(engine):
    r = requests.post(engine + "/api/chat", timeout=120, json={
        "model": MODEL, "messages": HI, "stream": False, "options": {"num_predict": 8},
        "format": {"type": "string", "maxLength": 400, "pattern": "^(a{1,400}){1,400}$"}})
    assert r.status_code == 200 and r.json()["done"]


def test_the_grammar_text_is_bounded_when_the_schema_bounds_are_raised(monkeypatch):
    """An operator may raise FORMAT_MAX_REPEAT; the grammar's own depth still stops what
    llama.cpp's parser cannot take."""
    from chatbot.engine import grammar
    from chatbot.engine.schema_limits import Bounds

    assert _depth('root ::= ("(" ( [()] x )?)') == 2  # parentheses in quotes and sets skipped
    monkeypatch.setattr(grammar, "BOUNDS", Bounds(max_repeat=100000))
    assert grammar_for({"type": "string", "maxLength": 1000}) is not None
    with pytest.raises(ApiError) as exc:
        grammar_for({"type": "string", "maxLength": 3000})
    assert exc.value.status == 400 and "too large" in exc.value.message
    assert MAX_GRAMMAR_DEPTH < 2000  # llama.cpp refused 2,000 deep, and crashed at 20,000


def test_a_grammar_llama_cpp_cannot_build_is_a_400_not_a_null_sampler(engine):
    """llama.cpp's parser refuses what its own sane defaults forbid; the test build says so
    before llama-cpp-python could sample with the null grammar it would leave."""
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    from chatbot.engine.models import default_model_path

    llm = Llama(str(default_model_path()), n_ctx=64, verbose=False)
    broken = LlamaGrammar.from_string('root ::= "a"', verbose=False)
    broken._grammar = "root ::= undefined-rule"
    with pytest.raises(ApiError) as exc:
        check_builds(llm, broken)
    assert exc.value.message == "invalid format: llama.cpp could not build a grammar from it"
    check_builds(llm, grammar_for({"type": "string", "maxLength": 8}))  # a good one builds
