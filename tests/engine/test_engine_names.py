"""The names registry in-process (no engine subprocess, no model loaded): corrupt files,
what survives a restart, Ollama's name syntax."""
import json
import os

import pytest

from chatbot.engine import minilm
from chatbot.engine.server import create_engine_app
from chatbot.engine.store import valid_name

from .conftest import EMBED_MODEL, MODEL


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """all-minilm's GGUF, converted once for the module: each test's cache gets a link."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("converted")))
        return minilm.gguf_path(minilm.source_zip())


@pytest.fixture
def cache(tmp_path, monkeypatch, converted):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "chatbot"
    folder.mkdir(parents=True)
    os.link(converted, folder / converted.name)
    return folder


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "gguf"
    path.mkdir()
    return path


def start(folder):
    """A fresh engine app, as after a restart; its test client and registry."""
    app = create_engine_app(models_dir=str(folder))
    return app.test_client(), app.extensions["chatbot_engine"].registry


def names(http):
    return {m["name"] for m in http.get("/api/tags").get_json()["models"]}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"copies": {"x": 5}, "deleted": 3}',
                                     '{"copies": {"a": {"name": "a:latest"}}}'])
def test_a_corrupt_registry_counts_as_empty_and_is_rewritten(cache, folder, content):
    (cache / "engine-models.json").write_text(content)
    http, _ = start(folder)
    assert names(http) == {MODEL, EMBED_MODEL}
    assert http.post("/api/copy", json={"source": MODEL, "destination": "mine"}).status_code == 200
    assert names(http) == {MODEL, EMBED_MODEL, "mine:latest"}
    saved = json.loads((cache / "engine-models.json").read_text())
    assert list(saved["copies"]) == ["mine:latest"]


def test_deleting_the_bundled_model_hides_it_until_restart(cache, folder):
    http, _ = start(folder)
    http.post("/api/copy", json={"source": MODEL, "destination": "keep:v1"})
    assert http.delete("/api/delete", json={"model": MODEL}).status_code == 200
    assert names(http) == {EMBED_MODEL, "keep:v1"}  # the copy still names the file
    assert http.post("/api/copy", json={"source": MODEL, "destination": "x"}).status_code == 404
    again, _ = start(folder)
    assert names(again) == {MODEL, EMBED_MODEL, "keep:v1"}


def test_all_minilm_is_bundled_too_copied_and_hidden_until_restart(cache, folder):
    http, _ = start(folder)
    assert http.post("/api/copy", json={"source": "all-minilm",
                                        "destination": "vectors"}).status_code == 200
    assert http.delete("/api/delete", json={"model": "all-minilm"}).status_code == 200
    assert names(http) == {MODEL, "vectors:latest"}
    show = http.post("/api/show", json={"model": "vectors"}).get_json()
    assert show["capabilities"] == ["embedding"] and show["details"]["family"] == "bert"
    again, _ = start(folder)
    assert names(again) == {MODEL, EMBED_MODEL, "vectors:latest"}


def test_a_deleted_folder_model_stays_deleted_until_its_file_changes(cache, folder):
    (folder / "local.gguf").write_bytes(b"not a model")
    http, registry = start(folder)
    assert registry.resolve("local") is not None
    assert http.delete("/api/delete", json={"model": "local:latest"}).status_code == 200
    assert registry.resolve("local") is None and (folder / "local.gguf").exists()
    _, registry = start(folder)
    assert registry.resolve("local") is None
    (folder / "local.gguf").write_bytes(b"a new download")
    assert registry.resolve("local") is not None


def test_a_copy_can_replace_a_name_and_delete_takes_both(cache, folder):
    (folder / "local.gguf").write_bytes(b"not a model")
    http, registry = start(folder)
    http.post("/api/copy", json={"source": MODEL, "destination": "local"})
    assert registry.resolve("local").path == registry.resolve(MODEL).path
    http.delete("/api/delete", json={"model": "local"})
    assert registry.resolve("local") is None


@pytest.mark.parametrize("name, ok", [
    ("mine", True), ("Mine:v1.2", True), ("me/mine:latest", True), ("_x", True),
    ("host.example:5000/me/mine:q4_K_M", True), ("a" * 80, True), ("a" * 81, False),
    ("", False), ("  ", False), ("no good", False), ("x:", False), (":tag", False),
    ("-x", False), ("a/b/c/d", False), ("me.you/mine", False), ("x:a/b", False),
])
def test_names_follow_ollamas_syntax(name, ok):
    assert valid_name(name) is ok
