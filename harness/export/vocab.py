"""The tokenizer inside a GGUF file, so the file runs alone in llama.cpp.

Byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3, Qwen2, the tests' byte tokenizer) are
written as llama.cpp's `gpt2` model the way its `convert_hf_to_gguf.py` does: every token string
by id (ids past the tokenizer's vocabulary padded as `[PAD<i>]`, type UNUSED), token types
(NORMAL, CONTROL for special added tokens, USER_DEFINED for other added tokens), merges as
"a b" strings, the special ids, and `tokenizer.ggml.pre` naming the pre-tokenizer regex llama.cpp
must use. The pre-tokenizer is read from tokenizer.json (convert_hf_to_gguf hashes a test
string instead; the structure is enough for the families here); another tokenizer kind is refused
in one line.
"""

from __future__ import annotations

import json

from harness.export import ExportError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 1, 2, 3, 4, 5


def pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre_tokenizer (byte-level BPE)."""
    if spec is None:
        return "default"
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"  # SmolLM/StarCoder: digits split one by one, then GPT-2's regex
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"]:
        pattern = json.dumps(parts[0].get("pattern", {}))
        if r"\\p{N}" in pattern and "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in pattern:
            return "qwen2" if r"\\p{N}|" in pattern else "llama-bpe"
    raise ExportError(f"tokenizer pre-tokenizer {kinds} has no known llama.cpp name: the GGUF "
                      "exporter knows SmolLM2 (smollm), GPT-2 (gpt-2), Qwen2 and Llama 3 byte-level BPE")


def add_tokenizer(writer, tokenizer, vocab_size: int, add_bos: bool) -> None:
    """Write the tokenizer's metadata into `writer` (a gguf.GGUFWriter)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("the GGUF exporter needs a fast tokenizer (tokenizer.json)")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ExportError(f"tokenizer model {model.get('type')} (byte_fallback="
                          f"{model.get('byte_fallback')}) is not byte-level BPE: only GPT-2-style "
                          "tokenizers are written into GGUF files yet")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    if max(by_id) >= vocab_size:
        raise ExportError(f"the tokenizer has id {max(by_id)} beyond the model's "
                          f"vocabulary of {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:  # llama.cpp requires the key and gguf refuses an empty array: a pair of
        merges = [f"{tokens[0]} {tokens[0]}"]  # byte tokens whose merge is in no vocabulary
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                       ("unk", "unk_token_id"), ("pad", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id",
                             "unk": "add_unk_token_id", "pad": "add_pad_token_id"}[name])(value)
    writer.add_add_bos_token(add_bos)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
