"""Model management against the real engine: copy, delete, pull, create, push, blobs.

Every name a test makes is unique and deleted afterwards, so the shared engine lists only
the bundled and folder models again once a test is over.
"""
import json
import uuid

import ollama
import pytest
import requests

from chatbot.ops import procs

from .conftest import FOLDER_MODEL, GREEDY, MODEL

HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture
def fresh(engine):
    """fresh() -> a new unique name (no tag); each is deleted when the test ends."""
    made = []

    def new(prefix="copy"):
        made.append(f"{prefix}-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for name in made:
        requests.delete(engine + "/api/delete", json={"model": name})


def listed(client):
    return {m.model: m for m in client.list().models}


def test_copy_lists_the_same_file_under_the_new_name(client, fresh, sha256, model_path):
    name = fresh()
    assert client.copy(MODEL, name).status == "success"
    models = listed(client)
    copy = models[f"{name}:latest"]  # no tag given: ":latest", as Ollama
    assert copy.digest == sha256 == models[MODEL].digest
    assert copy.size == model_path.stat().st_size
    assert copy.details == models[MODEL].details
    assert copy.modified_at >= models[MODEL].modified_at  # the copy's own time, as a manifest


def test_copy_answers_like_the_original(client, fresh, sha256):
    name = fresh()
    client.copy(MODEL, name)
    options = {**GREEDY, "num_predict": 8}
    original = client.chat(model=MODEL, messages=HI, options=options)
    copied = client.chat(model=name, messages=HI, options=options)
    assert copied.model == name and copied.message.content == original.message.content
    generated = client.generate(model=f"{name}:latest", prompt="Hi", options=options)
    assert generated.done and generated.response
    running = {m.model: m for m in client.ps().models}
    assert running[f"{name}:latest"].digest == sha256  # the name it was last used under
    assert MODEL not in running  # and the original shares that instance: one per file
    assert client.show(name).template == client.show(MODEL).template
    vector = client.embed(model=name, input="hello").embeddings[0]
    assert vector == pytest.approx(client.embed(model=MODEL, input="hello").embeddings[0],
                                   abs=1e-5)


def test_delete_removes_only_that_name(client, fresh):
    name = fresh()
    client.copy(FOLDER_MODEL, name)
    assert client.delete(name).status == "success"
    assert f"{name}:latest" not in listed(client) and FOLDER_MODEL in listed(client)
    with pytest.raises(ollama.ResponseError) as exc:
        client.delete(name)
    assert (exc.value.status_code, exc.value.error) == (404, f"model '{name}' not found")
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model=name, messages=HI)
    assert exc.value.status_code == 404


def test_copy_and_delete_errors_are_ollamas(engine, fresh):
    def post(path, body, method="post"):
        r = getattr(requests, method)(engine + path, json=body)
        return r.status_code, r.json()

    assert post("/api/copy", {"source": "nope", "destination": fresh()}) == \
        (404, {"error": 'model "nope" not found'})  # Go's %q in Ollama's CopyHandler
    assert post("/api/copy", {"destination": "x"}) == (400, {"error": 'source "" is invalid'})
    assert post("/api/copy", {"source": MODEL}) == (400, {"error": 'destination "" is invalid'})
    assert post("/api/copy", {"source": MODEL, "destination": "no good!"}) == \
        (400, {"error": 'destination "no good!" is invalid'})
    assert post("/api/copy", {"source": 1, "destination": "x"})[0] == 400
    assert post("/api/delete", {}, "delete") == (400, {"error": 'name "" is invalid'})
    assert post("/api/delete", {"model": "nope"}, "delete") == \
        (404, {"error": "model 'nope' not found"})
    r = requests.delete(engine + "/api/delete", data=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})


def test_copy_and_delete_answer_200_with_no_body_and_accept_legacy_name(engine, fresh):
    name = fresh()
    r = requests.post(engine + "/api/copy", json={"source": MODEL, "destination": name})
    assert (r.status_code, r.content) == (200, b"")
    r = requests.delete(engine + "/api/delete", json={"name": f"{name.upper()}:LATEST"})
    assert (r.status_code, r.content) == (200, b"")


def test_deleting_a_folder_model_forgets_it_and_unloads_it(client, models_dir, model_path):
    stem = f"extra-{uuid.uuid4().hex[:8]}"
    path = models_dir / f"{stem}.gguf"
    path.symlink_to(model_path)
    try:
        client.chat(model=stem, messages=[], options={"num_ctx": 256})
        assert stem in {m.model for m in client.ps().models}
        client.delete(stem)
        assert stem not in listed(client) and stem not in {m.model for m in client.ps().models}
        assert path.exists()  # only the name goes
        with pytest.raises(ollama.ResponseError):
            client.delete(stem)
    finally:
        path.unlink()


def test_pull_of_a_served_model_streams_progress(client, sha256, model_path):
    progress = list(client.pull(MODEL, stream=True))
    assert [p.status for p in progress] == ["pulling manifest", f"pulling {sha256[:12]}",
                                            "verifying sha256 digest", "writing manifest",
                                            "success"]
    layer = progress[1]
    assert layer.digest == f"sha256:{sha256}"
    assert layer.total == layer.completed == model_path.stat().st_size
    assert client.pull(MODEL).status == "success"


def test_pull_of_an_unknown_model_fails_like_ollama(client, engine):
    with pytest.raises(ollama.ResponseError) as exc:
        client.pull("no-such:1b")
    assert exc.value.status_code == 500
    assert exc.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError):
        list(client.pull("no-such:1b", stream=True))
    r = requests.post(engine + "/api/pull", json={"model": "no-such:1b"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-ndjson"
    assert lines == [{"status": "pulling manifest"},
                     {"error": "pull model manifest: file does not exist"}]
    r = requests.post(engine + "/api/pull", json={})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})


def test_create_from_an_existing_model(client, fresh, sha256):
    name = fresh("made")
    progress = list(client.create(model=name, from_=MODEL, stream=True))
    assert [p.status for p in progress] == [f"using existing layer sha256:{sha256}",
                                            "writing manifest", "success"]
    assert listed(client)[f"{name}:latest"].digest == sha256
    other = fresh("made")
    assert client.create(model=other, from_=name).status == "success"
    assert client.generate(model=other, prompt="Hi", options={**GREEDY, "num_predict": 2}).done


@pytest.mark.parametrize("body, status, words", [
    ({"from": "nope"}, 404, "model 'nope' not found"),
    ({}, 400, "neither 'from' or 'files' was specified"),
    ({"files": {"model.gguf": "sha256:" + "0" * 64}}, 400, "bundled engine cannot"),
    ({"from": MODEL, "adapters": {"a.gguf": "sha256:" + "0" * 64}}, 400, "bundled engine"),
    ({"from": MODEL, "system": "Be terse."}, 400, "cannot set system"),
    ({"from": MODEL, "quantize": "q4_K_M"}, 400, "cannot quantize"),
])
def test_create_refuses_what_needs_a_registry_or_uploads(engine, fresh, body, status, words):
    name = fresh("made")
    r = requests.post(engine + "/api/create", json={"model": name, **body})
    assert r.status_code == status and words in r.json()["error"]
    assert requests.post(engine + "/api/show", json={"model": name}).status_code == 404


def test_push_has_no_registry(client, engine):
    with pytest.raises(ollama.ResponseError) as exc:
        client.push(MODEL)
    assert exc.value.status_code == 500 and "no registry" in exc.value.error
    with pytest.raises(ollama.ResponseError):
        list(client.push(MODEL, stream=True))
    r = requests.post(engine + "/api/push", json={"model": MODEL})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and "no registry" in lines[-1]["error"]
    r = requests.post(engine + "/api/push", json={})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


def test_blobs_know_served_files_and_refuse_uploads(engine, sha256):
    assert requests.head(f"{engine}/api/blobs/sha256:{sha256}").status_code == 200
    assert requests.head(f"{engine}/api/blobs/sha256:{'0' * 64}").status_code == 404
    assert requests.head(f"{engine}/api/blobs/nonsense").status_code == 400
    r = requests.post(f"{engine}/api/blobs/sha256:{'0' * 64}", data=b"GGUF...")
    assert r.status_code == 400 and "does not accept blob uploads" in r.json()["error"]
    r = requests.post(f"{engine}/api/blobs/nonsense", data=b"x")
    assert (r.status_code, r.json()) == (400, {"error": "invalid digest format"})


def test_names_persist_across_restarts(client, fresh, cache_dir, models_dir, tmp_path, sha256):
    name = fresh()
    client.copy(MODEL, name)
    saved = json.loads((cache_dir / "chatbot" / "engine-models.json").read_text())
    assert saved["copies"][f"{name}:latest"]["name"] == f"{name}:latest"
    env = {"CHATBOT_ENGINE_MODELS": str(models_dir), "XDG_CACHE_HOME": str(cache_dir)}
    proc, url = procs.start_engine(procs.free_port(), log=tmp_path / "second.log", env=env)
    try:
        second = ollama.Client(host=url)
        assert listed(second)[f"{name}:latest"].digest == sha256
        second.delete(name)  # the two engines share the names file
        assert f"{name}:latest" not in listed(second)
    finally:
        procs.stop(proc)
    assert proc.returncode == 0
    assert f"{name}:latest" not in listed(client)

