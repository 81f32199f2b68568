"""ENGINE_MAX_LOADED_MODELS (chatbot/engine/resident.py): the engine loads at most that many
model files, unloading the one whose time is up soonest; /metrics counts loads and unloads;
a conversation's prompt state outlives its model's eviction; 0 keeps every model loaded.

Two more names for the bundled GGUF, symlinks under other paths in CHATBOT_ENGINE_MODELS,
are separate files to the engine (as bench/line.py's smollm2-b), loaded separately."""
import pytest
import requests

from chatbot.ops import procs
from tests.engine.conftest import GREEDY, MODEL
from tests.engine.test_engine_prompt_cache import conversation

SECOND, THIRD = "second", "third"
OPTIONS = {**GREEDY, "num_predict": 8, "num_ctx": 2048}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model_path):
    path = tmp_path_factory.mktemp("loaded-models")
    for name in (SECOND, THIRD):
        (path / f"{name}.gguf").symlink_to(model_path)
    return path


def start(tmp_path_factory, cache_dir, folder, **env):
    log = tmp_path_factory.mktemp("loaded") / "engine.log"
    return procs.start_engine(procs.free_port(), log=log, env={
        "CHATBOT_ENGINE_MODELS": str(folder), "XDG_CACHE_HOME": str(cache_dir), **env})


@pytest.fixture(scope="module")
def one(tmp_path_factory, cache_dir, folder):
    proc, url = start(tmp_path_factory, cache_dir, folder, ENGINE_MAX_LOADED_MODELS="1")
    yield url
    procs.stop(proc)
    assert proc.returncode == 0


@pytest.fixture(scope="module")
def two(tmp_path_factory, cache_dir, folder):
    proc, url = start(tmp_path_factory, cache_dir, folder, ENGINE_MAX_LOADED_MODELS="2")
    yield url
    procs.stop(proc)


@pytest.fixture(scope="module")
def unbounded(tmp_path_factory, cache_dir, folder):
    """No bound and no prompt cache: every answer here is evaluated whole."""
    proc, url = start(tmp_path_factory, cache_dir, folder, ENGINE_MAX_LOADED_MODELS="0",
                      ENGINE_CACHE_MB="0")
    yield url
    procs.stop(proc)


def chat(url, model, messages, **body):
    resp = requests.post(url + "/api/chat", timeout=300, json={
        "model": model, "messages": messages, "stream": False, "options": OPTIONS, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def hi(url, model, **body):
    return chat(url, model, [{"role": "user", "content": "Say hi."}], **body)


def loaded(url):
    return sorted(m["name"] for m in requests.get(url + "/api/ps", timeout=10).json()["models"])


def metrics(url):
    text = requests.get(url + "/metrics", timeout=10).text
    return {line.split()[0]: float(line.split()[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def bound_unloads(url):
    return metrics(url)['chatbot_engine_model_unloads_total{reason="bound"}']


def test_a_second_model_unloads_the_first_and_the_first_loads_again(one):
    hi(one, MODEL)
    before = metrics(one)
    assert hi(one, SECOND)["load_duration"] > 0
    assert loaded(one) == [SECOND]
    again = hi(one, MODEL)
    assert again["load_duration"] > 0
    assert loaded(one) == [MODEL]
    after = metrics(one)
    assert after["chatbot_engine_model_loads_total"] - before["chatbot_engine_model_loads_total"] \
        == 2
    assert bound_unloads(one) - before['chatbot_engine_model_unloads_total{reason="bound"}'] == 2
    assert after["chatbot_engine_models_loaded"] == 1
    assert after["chatbot_engine_max_loaded_models"] == 1
    assert hi(one, MODEL)["load_duration"] == 0  # loaded: no load, nothing unloaded
    assert bound_unloads(one) == after['chatbot_engine_model_unloads_total{reason="bound"}']


def test_a_conversation_keeps_its_prompt_state_through_its_model_being_swapped_out(
        one, unbounded):
    history = conversation(21)
    history.append(chat(one, MODEL, history)["message"])
    history.append({"role": "user", "content": "And the last word?"})
    hi(one, SECOND)  # unloads MODEL with the conversation's state in it
    before = metrics(one)
    answer = chat(one, MODEL, history)
    after = metrics(one)
    assert answer["load_duration"] > 0
    assert after["chatbot_engine_prompt_cache_loads_total"] == \
        before["chatbot_engine_prompt_cache_loads_total"] + 1
    reused = after["chatbot_engine_prompt_cache_reused_tokens_total"] - \
        before["chatbot_engine_prompt_cache_reused_tokens_total"]
    evaluated = after["chatbot_engine_prompt_cache_evaluated_tokens_total"] - \
        before["chatbot_engine_prompt_cache_evaluated_tokens_total"]
    assert reused > 400 and evaluated < 60, (reused, evaluated)
    hi(unbounded, MODEL)  # the reference from nothing: another prompt first, no cache
    assert answer["message"]["content"] == chat(unbounded, MODEL, history)["message"]["content"]


def test_another_context_size_takes_no_kept_state(one):
    history = conversation(22)
    history.append(chat(one, MODEL, history)["message"])
    history.append({"role": "user", "content": "And the last word?"})
    hi(one, SECOND)
    before = metrics(one)
    resp = requests.post(one + "/api/chat", timeout=300, json={
        "model": MODEL, "messages": history, "stream": False,
        "options": {**OPTIONS, "num_ctx": 1024}})
    assert resp.status_code == 200 and resp.json()["load_duration"] > 0
    after = metrics(one)
    assert after["chatbot_engine_prompt_cache_loads_total"] == \
        before["chatbot_engine_prompt_cache_loads_total"]
    assert after["chatbot_engine_prompt_cache_evaluated_tokens_total"] - \
        before["chatbot_engine_prompt_cache_evaluated_tokens_total"] > 400


def test_the_model_with_the_least_time_left_goes_first(two):
    hi(two, MODEL, keep_alive=-1)  # used first, but kept forever
    hi(two, SECOND, keep_alive="1h")
    assert hi(two, THIRD)["load_duration"] > 0
    assert loaded(two) == sorted([MODEL, THIRD])
    hi(two, SECOND)  # now MODEL (forever, used before THIRD's forever) goes
    assert loaded(two) == sorted([SECOND, THIRD])
    assert bound_unloads(two) == 2


def test_a_file_loaded_for_chat_and_embeddings_counts_once(one):
    hi(one, MODEL)
    resp = requests.post(one + "/api/embed", timeout=60, json={"model": MODEL, "input": "hi"})
    assert resp.status_code == 200, resp.text
    assert metrics(one)["chatbot_engine_models_loaded"] == 1
    assert hi(one, MODEL)["load_duration"] == 0  # the chat instance stayed


def test_no_bound_keeps_every_model_loaded(unbounded):
    for model in (MODEL, SECOND, THIRD):
        hi(unbounded, model)
    assert loaded(unbounded) == sorted([MODEL, SECOND, THIRD])
    assert hi(unbounded, MODEL)["load_duration"] == 0
    figures = metrics(unbounded)
    assert figures['chatbot_engine_model_unloads_total{reason="bound"}'] == 0
    assert figures["chatbot_engine_models_loaded"] == 3


@pytest.mark.parametrize("bad", ["-1", "lots"])
def test_a_bad_bound_stops_the_engine(tmp_path, bad):
    proc = procs.spawn(procs.engine_argv(procs.free_port()),
                       env={"ENGINE_MAX_LOADED_MODELS": bad}, log=tmp_path / "engine.log")
    assert proc.wait(60) != 0
    assert "ENGINE_MAX_LOADED_MODELS must be a number of models" in \
        (tmp_path / "engine.log").read_text()
