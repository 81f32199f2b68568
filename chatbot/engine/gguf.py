"""A minimal GGUF header reader: typed metadata and the parameter count.

llama.cpp's own metadata API returns every value as a string and cannot count parameters
without loading the weights; /api/show needs typed values (numbers stay numbers, as
Ollama's `model_info` has them) and `general.parameter_count`, so we read the header.
"""
import os
import struct
from dataclasses import dataclass, field

_SCALARS = {  # GGUF value type -> struct format
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9
# ggml tensor types: (values per block, bytes per block), as gguf-py's GGML_QUANT_SIZES.
_TENSOR_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66),
}

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
        value = self.arch_value("context_length")
        return value if isinstance(value, int) and value > 0 else 2048

    @property
    def quantization_level(self):
        return FILE_TYPES.get(self.metadata.get("general.file_type"), "unknown")

    @property
    def chat_template(self):
        return self.metadata.get("tokenizer.chat_template") or ""


class _Reader:
    """Reads never go past the end of the file: a length or count read from a corrupt
    header (up to 2**64) must fail as "truncated", not allocate or seek that far."""

    def __init__(self, f):
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def read(self, n):
        if n > self.size - self.f.tell():
            raise ValueError("truncated or corrupt GGUF header")
        return self.f.read(n)

    def unpack(self, fmt):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self):
        return self.read(self.unpack("<Q")).decode("utf-8", errors="replace")

    def skip_string(self):
        n = self.unpack("<Q")
        if n > self.size - self.f.tell():
            raise ValueError("truncated or corrupt GGUF header")
        self.f.seek(n, 1)

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
        if count > self.size - self.f.tell():  # every element takes a byte at least
            raise ValueError("truncated or corrupt GGUF header")
        if etype in _SCALARS:
            fmt = _SCALARS[etype]
            raw = self.read(struct.calcsize(fmt) * count)
            return list(struct.unpack(f"<{count}{fmt[1]}", raw)) if keep_arrays else None
        if etype == _STRING and not keep_arrays:
            # Vocabularies hold ~50k strings: skip them without building Python objects.
            for _ in range(count):
                self.skip_string()
            return None
        items = [self.value(etype, keep_arrays) for _ in range(count)]
        return items if keep_arrays else None


def read_gguf(path, keep_arrays=False):
    """The header of a GGUF file; ValueError (naming the file) when it is not a readable one,
    OSError when the file cannot be opened."""
    try:
        return _read_gguf(path, keep_arrays)
    except (struct.error, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        message = str(exc)
        raise ValueError(message if str(path) in message else f"{path}: {message}") from None


def _read_gguf(path, keep_arrays):
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
        params, data_end = 0, 0
        for _ in range(n_tensors):
            r.skip_string()
            dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
            ggml_type, offset = r.unpack("<I"), r.unpack("<Q")
            n = 1
            for d in dims:
                n *= d
            params += n
            block, size = _TENSOR_SIZES.get(ggml_type, (1, 0))  # unknown type: its start
            data_end = max(data_end, offset + n // block * size)
        alignment = metadata.get("general.alignment")
        alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
        data_start = -(-f.tell() // alignment) * alignment
        if data_start + data_end > r.size:  # an interrupted download keeps its header
            raise ValueError(f"{path}: truncated GGUF: tensor data needs "
                             f"{data_start + data_end} bytes, the file has {r.size}")
    return GGUFInfo(metadata=metadata, parameter_count=params, tensor_count=n_tensors)


def token_text(info, key):
    """The text of a special token named by metadata, e.g. "tokenizer.ggml.bos_token_id"."""
    tokens = info.metadata.get("tokenizer.ggml.tokens") or []
    token_id = info.metadata.get(key)
    return tokens[token_id] if isinstance(token_id, int) and 0 <= token_id < len(tokens) else ""
