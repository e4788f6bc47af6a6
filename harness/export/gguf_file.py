"""Write a (pruned, recovered) HF model as a GGUF file that llama.cpp runs alone.

Arch chosen from the layer plan (`layout.py`):
  - every layer whole and alike (dense, whole-block depth pruning, uniform width): the family's
    stock arch (`llama` for Llama/Mistral, `qwen2`, `gemma3`), what convert_hf_to_gguf writes;
  - otherwise (attention or MLP removed from some blocks, uneven widths, FLAP output biases):
    `deci` (also Qwen2 with fewer query heads: llama.cpp's qwen2 sizes attn_q by n_embd), whose
    per-layer arrays `deci.attention.head_count`, `head_count_kv` and
    `deci.feed_forward_length` hold each block's sizes (0 = the sublayer is absent).
Two llama.cpp behaviours are handled here: a deci layer with attention but n_ff == 0 skips the
whole layer (its graph `continue`s before adding the attention output), so a removed MLP under a
kept attention is written as a 1-channel MLP whose weights are zero (it adds exactly 0); and a
block with neither sublayer is dropped (an empty last layer crashes decode). Gemma 3's graph has
no per-layer sizes, so only its uniform shapes export. Llama-style rope (`llama`, `deci`) wants
q/k rows permuted per head as convert_hf_to_gguf does; `qwen2` and `gemma3` use NEOX rope as
HF does. Gemma's norms store w and compute x*(1+w): written as 1+w.

Types: f32 everything; f16 the 2-D weights (norms and biases stay f32); q8_0 the 2-D weights
whose rows are a multiple of 32 (others f16, as convert_hf_to_gguf does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.export import ExportError
from harness.export.layout import LayerPlan, head_dim, plan_layers, uniform
from harness.export.vocab import add_tokenizer
from harness.models.adapters import adapter_for

DTYPES = ("f32", "f16", "q8_0")
STOCK_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3"}
NORM_ROPE = {"llama", "deci"}  # archs with llama.cpp's interleaved rope: q/k rows permuted


def choose_arch(model, plans: list[LayerPlan]) -> str:
    """The llama.cpp arch that holds this model, or ExportError naming why none does."""
    cfg = model.config
    family = cfg.model_type
    if family not in STOCK_ARCH:
        raise ExportError(f"GGUF export supports {', '.join(STOCK_ARCH)}; {family} is not one")
    if family == "mistral" and getattr(cfg, "sliding_window", None):
        raise ExportError("Mistral with a sliding window is not exported (llama arch has none)")
    rope = rope_params(cfg)
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"rope_type {rope['rope_type']} is not exported yet (only default rope)")
    if uniform(plans) and not (family == "qwen2" and plans[0].n_q * head_dim(model) != cfg.hidden_size):
        return STOCK_ARCH[family]  # llama.cpp's qwen2 sizes attn_q by n_embd: fewer heads -> deci
    if family == "gemma3_text":
        raise ExportError("llama.cpp's gemma3 graph has one size for all layers and no removed "
                          "sublayers: only dense, whole-block depth and uniform width Gemma 3 "
                          "models export")
    return "deci"


def rope_params(cfg, layer_type: str = "full_attention") -> dict:
    """transformers 5 `rope_parameters` (per layer type for Gemma 3), or the older fields."""
    rp = getattr(cfg, "rope_parameters", None) or {}
    if layer_type in rp:
        rp = rp[layer_type]
    out = dict(rp)
    out.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return out


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's half-split rope layout -> llama.cpp's interleaved one, per head (rows; 1-D too)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(model, tokenizer, path: str | Path, dtype: str = "f32") -> dict:
    """Write `model` (+ tokenizer) to `path`; returns a summary (arch, layers, tensors)."""
    import gguf

    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    plans = plan_layers(model)
    arch = choose_arch(model, plans)
    kept = [p for p in plans if not p.empty]
    if not kept:
        raise ExportError("every block was removed: nothing to export")
    cfg, adapter = model.config, adapter_for(model)
    gemma = arch == "gemma3"
    hd = head_dim(model)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(getattr(cfg, "_name_or_path", "") or "harness export")
    writer.add_block_count(len(kept))
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(float(rope_params(cfg)["rope_theta"]))
    writer.add_vocab_size(int(cfg.vocab_size))
    ffn = [p.n_ff if p.mlp else (1 if p.attn else 0) for p in kept]  # see the module docstring
    if arch == "deci":
        writer.add_head_count([p.n_q for p in kept])
        writer.add_head_count_kv([p.n_kv for p in kept])
        writer.add_feed_forward_length(ffn)
    else:
        writer.add_head_count(kept[0].n_q)
        writer.add_head_count_kv(kept[0].n_kv)
        writer.add_feed_forward_length(kept[0].n_ff)
    if gemma:
        types = [cfg.layer_types[p.index] for p in kept]
        if cfg.sliding_window and "sliding_attention" in types:
            writer.add_sliding_window(int(cfg.sliding_window))
            writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
            writer.add_rope_freq_base_swa(float(rope_params(cfg, "sliding_attention")["rope_theta"]))
        if getattr(cfg, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
        if getattr(cfg, "attn_logit_softcapping", None):
            raise ExportError("attention soft-capping is not in llama.cpp's gemma3 graph")
        if cfg.query_pre_attn_scalar != hd:
            raise ExportError(f"query_pre_attn_scalar {cfg.query_pre_attn_scalar} != head_dim {hd}:"
                              " llama.cpp's gemma3 graph scales by head_dim")
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    add_tokenizer(writer, tokenizer, int(cfg.vocab_size), add_bos=adapter.needs_bos)

    def put(name: str, t: torch.Tensor, norm: bool = False) -> None:
        a = t.detach().float().cpu()
        if norm and gemma:
            a = a + 1.0
        a = a.numpy()
        if a.ndim == 1 or dtype == "f32":
            writer.add_tensor(name, a.astype(np.float32))
        elif dtype == "q8_0" and a.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(a.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, a.astype(np.float16))

    backbone, lm = adapter.backbone(model), model
    put("token_embd.weight", backbone.embed_tokens.weight)
    put("output_norm.weight", backbone.norm.weight, norm=True)
    if not getattr(cfg, "tie_word_embeddings", False):  # tied: llama.cpp reuses token_embd
        put("output.weight", lm.get_output_embeddings().weight)
    layers = adapter.layers(model)
    for b, p in enumerate(kept):
        layer = layers[p.index]
        pieces = adapter.pieces(layer)
        blk = f"blk.{b}"
        if p.attn:
            a_norms = [getattr(layer, n) for n in adapter.attn_norms]
            put(f"{blk}.attn_norm.weight", a_norms[0].weight, norm=True)
            if gemma:
                put(f"{blk}.post_attention_norm.weight", a_norms[1].weight, norm=True)
                attn = adapter.attention(layer)
                put(f"{blk}.attn_q_norm.weight", attn.q_norm.weight, norm=True)
                put(f"{blk}.attn_k_norm.weight", attn.k_norm.weight, norm=True)
            for key, n_head in (("q", p.n_q), ("k", p.n_kv), ("v", None)):
                mod = pieces[key].module
                w, bias = mod.weight, mod.bias
                if arch in NORM_ROPE and n_head is not None:
                    w = permute(w.detach(), n_head)
                    bias = permute(bias.detach(), n_head) if bias is not None else None
                put(f"{blk}.attn_{key}.weight", w)
                if bias is not None:
                    put(f"{blk}.attn_{key}.bias", bias)
            o = pieces["o"].module
            put(f"{blk}.attn_output.weight", o.weight)
            if o.bias is not None:
                put(f"{blk}.attn_output.bias", o.bias)
        if p.mlp:
            m_norms = [getattr(layer, n) for n in adapter.mlp_norms]
            put(f"{blk}.ffn_norm.weight", m_norms[0].weight, norm=True)
            if gemma:
                put(f"{blk}.post_ffw_norm.weight", m_norms[1].weight, norm=True)
            for key, name in (("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")):
                mod = pieces[key].module
                put(f"{blk}.{name}.weight", mod.weight)
                if mod.bias is not None:
                    put(f"{blk}.{name}.bias", mod.bias)
        elif p.attn:  # deci: a zero 1-channel MLP keeps the attention output (docstring)
            h = int(cfg.hidden_size)
            put(f"{blk}.ffn_norm.weight", torch.ones(h))
            for name, shape in (("ffn_gate", (1, h)), ("ffn_up", (1, h)), ("ffn_down", (h, 1))):
                put(f"{blk}.{name}.weight", torch.zeros(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"arch": arch, "dtype": dtype, "blocks": len(kept), "dropped_blocks":
            [p.index for p in plans if p.empty],
            "zero_mlp_blocks": [p.index for p in kept if p.attn and not p.mlp]}
