"""Model files the engine cannot read (not GGUF, or cut short as an interrupted download
leaves them): left out of listings with one warning line each, a JSON 500 when named."""
import ollama
import pytest
import requests

from chatbot.engine.gguf import read_gguf

from .conftest import BROKEN_MODEL, GREEDY, MODEL, TRUNCATED_MODELS


def test_unreadable_model_files_are_left_out_of_tags_with_one_warning(engine, client,
                                                                      engine_log):
    for _ in range(2):
        r = requests.get(engine + "/api/tags")
        assert r.status_code == 200
        names = {m["name"] for m in r.json()["models"]}
        assert MODEL in names and "tiny" in names
        assert not names & {BROKEN_MODEL, *TRUNCATED_MODELS}
    assert {m.model for m in client.list().models} == names
    lines = engine_log.read_text().splitlines()
    for name in (BROKEN_MODEL, *TRUNCATED_MODELS):
        warnings = [line for line in lines if f"model {name} is unreadable" in line]
        assert len(warnings) == 1, (name, warnings)
        assert "WARNING" in warnings[0] and f"{name}.gguf" in warnings[0]
    assert "truncated" in next(line for line in lines if "truncated-data is unreadable" in line)


@pytest.mark.parametrize("name", sorted(TRUNCATED_MODELS))
def test_using_a_truncated_model_fails_as_json(engine, client, name):
    r = requests.post(engine + "/api/generate", json={"model": name, "prompt": "hi",
                                                      "stream": False})
    assert r.status_code == 500 and "truncated" in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as exc:
        client.show(name)
    assert exc.value.status_code == 500
    assert client.generate(model=MODEL, prompt="Hi", options={**GREEDY, "num_predict": 2}).done


def test_gguf_reader_fails_cleanly_on_any_cut(tmp_path, model_path):
    """Every prefix of the header is a ValueError naming the file: never struct.error, nor a
    read of a length taken from garbage."""
    with open(model_path, "rb") as f:
        start = f.read(3 * 1024 * 1024)
    cut = tmp_path / "cut.gguf"
    for size in (0, 4, 8, 23, 24, 100, 4096, 65536, 1024 * 1024, len(start)):
        cut.write_bytes(start[:size])
        with pytest.raises(ValueError, match="cut.gguf"):
            read_gguf(cut)
    huge = bytearray(start[:4096])
    huge[24:32] = (2**63).to_bytes(8, "little")  # the first key's length
    cut.write_bytes(bytes(huge))
    with pytest.raises(ValueError, match="truncated or corrupt GGUF header"):
        read_gguf(cut)
