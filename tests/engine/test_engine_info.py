"""GET/HEAD /, /api/version, /api/tags, /api/show, /api/ps against the real engine."""
import json
import re

import requests

from .conftest import EMBED_MODEL, FOLDER_MODEL, GREEDY, MODEL


def test_root_answers_like_ollama(engine):
    r = requests.get(engine + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert requests.head(engine + "/").status_code == 200


def test_version_is_plausible(engine):
    version = requests.get(engine + "/api/version").json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


def test_tags_list_bundled_and_folder_models(client, model_path, sha256):
    models = {m.model: m for m in client.list().models}
    assert set(models) == {MODEL, FOLDER_MODEL, EMBED_MODEL}
    bundled = models[MODEL]
    assert bundled.digest == sha256 and len(bundled.digest) == 64
    assert bundled.size == model_path.stat().st_size
    assert bundled.modified_at is not None
    d = bundled.details
    assert (d.format, d.family, d.families) == ("gguf", "llama", ["llama"])
    assert d.parameter_size == "134.52M" and d.quantization_level == "Q4_1"
    assert models[FOLDER_MODEL].digest == sha256  # a symlink to the same file


def test_digests_are_cached_beside_path_mtime_and_size(client, cache_dir, model_path, sha256):
    client.list()
    cached = json.loads((cache_dir / "chatbot" / "engine-digests.json").read_text())
    entry = cached[str(model_path.resolve())]
    st = model_path.stat()
    assert entry == {"signature": [st.st_mtime_ns, st.st_size], "sha256": sha256}


def test_show_carries_model_info_and_template(client, tokenizer):
    shown = client.show(MODEL)
    info = shown.modelinfo
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 8192
    assert info["general.parameter_count"] == 134515008
    assert info["llama.embedding_length"] == 576
    assert info["tokenizer.ggml.tokens"] is None  # arrays only with verbose, as Ollama
    assert shown.template == tokenizer.llm.metadata["tokenizer.chat_template"]
    assert shown.capabilities == ["completion", "tools"]
    assert shown.license == "apache-2.0"
    assert "FROM " in shown.modelfile and "<|im_end|>" in shown.parameters
    assert shown.details.family == "llama" and shown.modified_at is not None


def test_show_accepts_legacy_name_and_verbose(engine):
    r = requests.post(engine + "/api/show", json={"name": MODEL, "verbose": True})
    assert r.status_code == 200
    assert len(r.json()["model_info"]["tokenizer.ggml.tokens"]) == 49152


def test_ps_lists_loaded_model_with_its_context(client):
    client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    model = running[MODEL]
    assert model.context_length == 8192 and model.size_vram == 0
    assert len(model.digest) == 64 and model.expires_at is not None
    assert model.details.parameter_size == "134.52M"


def test_num_ctx_reloads_with_the_asked_context(client):
    client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 1,
                                                       "num_ctx": 1024})
    assert {m.model: m.context_length for m in client.ps().models}[MODEL] == 1024
    client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 1})
    assert {m.model: m.context_length for m in client.ps().models}[MODEL] == 8192


def test_load_and_unload_with_empty_requests(client):
    loaded = client.chat(model=FOLDER_MODEL, messages=[])
    assert loaded.done and loaded.done_reason == "load" and loaded.message.content == ""
    assert "tiny" in {m.model for m in client.ps().models}
    unloaded = client.generate(model="tiny:latest", prompt="", keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload" and unloaded.response == ""
    assert "tiny" not in {m.model for m in client.ps().models}
    streamed = list(client.generate(model=FOLDER_MODEL, stream=True))
    assert [c.done_reason for c in streamed] == ["load"]
    client.generate(model=FOLDER_MODEL, keep_alive=0)
