"""Writes the generated demo model (demo_model/generate.py) as a GGUF file llama-server can load.

llama.cpp's convert_hf_to_gguf.py needs torch and transformers; the demo model is small and plain
(Qwen3 architecture, float32 safetensors, a byte-level BPE tokenizer with GPT-2 pre-tokenization), so
the `gguf` package vendored next to the llama.cpp source writes it directly: same metadata keys, tensor
names from gguf's own name map, tokens/merges/special ids/chat template via gguf.SpecialVocab.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

EXPORT_VERSION = 2  # bump when the written file changes shape (part of the file name, so stale ones are not reused)


def _gguf(source: Path):
    """The gguf-py package from the same llama.cpp source as the server (so the format matches)."""
    sys.path.insert(0, str(source / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    return gguf


def export_gguf(model_dir: Path, out: Path, llama_cpp_source: Path) -> Path:
    """Write `model_dir` (a generated demo model) to `out` unless it is already there and newer."""
    if out.exists() and out.stat().st_mtime >= (model_dir / "model.safetensors").stat().st_mtime:
        return out
    gguf = _gguf(llama_cpp_source)
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    arch = gguf.MODEL_ARCH.QWEN3
    tmp = out.with_suffix(".tmp")
    w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(model_dir.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tok = json.loads((model_dir / "tokenizer.json").read_text())
    added = {t["id"]: t for t in tok["added_tokens"]}
    by_id = {i: s for s, i in tok["model"]["vocab"].items()} | {i: t["content"] for i, t in added.items()}
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # pre_tokenizers.ByteLevel(use_regex=True) splits with GPT-2's regex
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(w)
    w.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    for name, data in load_file(str(model_dir / "model.safetensors")).items():
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ValueError(f"no GGUF name for tensor {name}")
        w.add_tensor(mapped, data.astype("float32"))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)
    return out
