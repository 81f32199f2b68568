"""A minimal GGUF header reader: typed metadata and the parameter count.

llama.cpp's own metadata API returns every value as a string and cannot count parameters
without loading the weights; /api/show needs typed values (numbers stay numbers, as
Ollama's `model_info` has them) and `general.parameter_count`, so we read the header.
"""
import struct
from dataclasses import dataclass, field

_SCALARS = {  # GGUF value type -> struct format
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9

# llama.cpp's `enum llama_ftype` (general.file_type), as Ollama names quantization levels.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}


@dataclass
class GGUFInfo:
    metadata: dict = field(default_factory=dict)  # arrays None unless kept (see read_gguf)
    parameter_count: int = 0
    tensor_count: int = 0

    @property
    def architecture(self):
        return self.metadata.get("general.architecture", "llama")

    def arch_value(self, key, default=None):
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def context_length(self):
        return int(self.arch_value("context_length") or 2048)

    @property
    def quantization_level(self):
        return FILE_TYPES.get(self.metadata.get("general.file_type"), "unknown")

    @property
    def chat_template(self):
        return self.metadata.get("tokenizer.chat_template") or ""


class _Reader:
    def __init__(self, f):
        self.f = f

    def unpack(self, fmt):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.f.read(size))[0]

    def string(self):
        return self.f.read(self.unpack("<Q")).decode("utf-8", errors="replace")

    def skip_string(self):
        self.f.seek(self.unpack("<Q"), 1)

    def value(self, vtype, keep_arrays):
        if vtype == 6:  # float32: shortest repr, as Go prints it (1e-05, not 9.99e-06)
            return float(f"{self.unpack('<f'):.7g}")
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        etype, count = self.unpack("<I"), self.unpack("<Q")
        if etype in _SCALARS:
            fmt = _SCALARS[etype]
            raw = self.f.read(struct.calcsize(fmt) * count)
            return list(struct.unpack(f"<{count}{fmt[1]}", raw)) if keep_arrays else None
        if etype == _STRING and not keep_arrays:
            # Vocabularies hold ~50k strings: skip them without building Python objects.
            for _ in range(count):
                self.skip_string()
            return None
        items = [self.value(etype, keep_arrays) for _ in range(count)]
        return items if keep_arrays else None


def read_gguf(path, keep_arrays=False):
    with open(path, "rb") as f:
        r = _Reader(f)
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        if r.unpack("<I") < 2:  # v1 (2023) used 32-bit lengths; llama.cpp dropped it too
            raise ValueError(f"{path}: GGUF v1 is not supported")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = r.string()
            # The vocabulary is kept: chat templates need the BOS/EOS token texts.
            keep = keep_arrays or key == "tokenizer.ggml.tokens"
            metadata[key] = r.value(r.unpack("<I"), keep)
        params = 0
        for _ in range(n_tensors):
            r.skip_string()
            dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
            r.unpack("<I"), r.unpack("<Q")  # tensor type, data offset
            n = 1
            for d in dims:
                n *= d
            params += n
    return GGUFInfo(metadata=metadata, parameter_count=params, tensor_count=n_tensors)


def token_text(info, key):
    """The text of a special token named by metadata, e.g. "tokenizer.ggml.bos_token_id"."""
    tokens = info.metadata.get("tokenizer.ggml.tokens") or []
    token_id = info.metadata.get(key)
    return tokens[token_id] if isinstance(token_id, int) and 0 <= token_id < len(tokens) else ""
