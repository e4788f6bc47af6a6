"""A pruned model as a vLLM `DeciLMForCausalLM` (Nemotron-NAS) checkpoint.

vLLM's DeciLM (`nemotron_nas.py`) reads `block_configs`, one per layer: `attention.no_op`,
`attention.n_heads_in_group` (so KV heads may vary per layer), `ffn.no_op` and
`ffn.intermediate_size`. It builds every attention with `config.num_attention_heads` query
heads and one `attention_bias` / `mlp_bias` flag for all layers. So it holds every model whose
kept attention layers share one query-head count: dense, whole-block and attention-only /
MLP-only depth pruning, uniform width, uneven MLP widths with attention uniform, and FLAP's
output biases (the flag is set and absent biases are written as zeros, which changes nothing).
It cannot hold query-head counts that differ between layers (global or per-layer attention
pruning, q_head or kv_group units alike): the export refuses those in one line. Only Llama-layout families (Llama,
Mistral without a sliding window, Qwen2 with its q/k/v biases) are written; vLLM's DeciLM uses
HF's (NEOX) rope layout, so weights are copied as they are. Blocks with neither sublayer are
dropped. The config class of `nemotron-nas` is remote code in the Hugging Face ecosystem
(`configuration_decilm.py` of NVIDIA's Nemotron-NAS checkpoints), so serving needs that file
next to the weights and `--trust-remote-code`; the harness does not ship it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from harness.export import ExportError
from harness.export.layout import head_dim, plan_layers
from harness.models.adapters import adapter_for

FAMILIES = ("llama", "mistral", "qwen2")


def block_configs(model) -> tuple[list[dict], dict]:
    """(block_configs of the kept blocks, config fields), or ExportError naming the reason."""
    cfg = model.config
    if cfg.model_type not in FAMILIES:
        raise ExportError(f"vLLM's DeciLM holds Llama-layout models ({', '.join(FAMILIES)}); "
                          f"{cfg.model_type} is not one")
    if cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None):
        raise ExportError("vLLM's DeciLM has no sliding window (Mistral with one)")
    plans = [p for p in plan_layers(model) if not p.empty]
    heads = sorted({p.n_q for p in plans if p.attn})
    if len(heads) > 1:
        raise ExportError(f"vLLM's DeciLM has one query-head count for all layers; this model has "
                          f"{heads} (uneven attention widths: use GGUF, or prune attention uniformly)")
    n_q = heads[0] if heads else cfg.num_attention_heads
    blocks = []
    for p in plans:
        if p.attn and n_q % p.n_kv:
            raise ExportError(f"layer {p.index}: {n_q} query heads are not a multiple of "
                              f"{p.n_kv} KV heads")
        blocks.append({
            "attention": {"no_op": not p.attn, "replace_with_linear": False,
                          "n_heads_in_group": n_q // p.n_kv if p.attn else None},
            "ffn": {"no_op": not p.mlp, "replace_with_linear": False,
                    "intermediate_size": p.n_ff if p.mlp else None},
        })
    fields = {"num_attention_heads": n_q, "num_hidden_layers": len(blocks),
              "head_dim": head_dim(model),
              "attention_bias": any(p.o_bias for p in plans),
              "mlp_bias": any(p.down_bias for p in plans)}
    if cfg.model_type == "qwen2":
        fields["qkv_bias"] = True
    return blocks, fields


def write_vllm(model, tokenizer, out_dir: str | Path) -> dict:
    """Write config.json, model.safetensors and the tokenizer into `out_dir`."""
    out = Path(out_dir)
    blocks, fields = block_configs(model)
    adapter = adapter_for(model)
    plans = plan_layers(model)
    kept = [p for p in plans if not p.empty]
    layers = adapter.layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    prefix = names[id(layers)]
    state = {}
    for n, t in model.state_dict().items():
        if not n.startswith(prefix + "."):
            state[n] = t
    for b, p in enumerate(kept):
        layer = layers[p.index]
        src, dst = names[id(layer)], f"{prefix}.{b}"
        for n, t in layer.state_dict().items():
            state[f"{dst}.{n}"] = t
        for key, piece in adapter.pieces(layer).items():  # zero biases the flags imply
            mod = piece.module
            flag = (fields["attention_bias"] or (key in "qkv" and fields.get("qkv_bias"))
                    if key in ("q", "k", "v", "o") else fields["mlp_bias"])
            if flag and mod.bias is None:
                rel = names[id(mod)][len(src) + 1:]
                state[f"{dst}.{rel}.bias"] = torch.zeros(mod.weight.shape[0])
    if getattr(model.config, "tie_word_embeddings", False):
        state = {n: t for n, t in state.items() if not n.endswith("lm_head.weight")}
    out.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().contiguous().cpu() for n, t in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    for k in ("harness_layer_shapes", "harness_skip_attn", "harness_skip_mlp", "layer_types",
              "num_key_value_heads", "intermediate_size"):  # per block in block_configs
        config.pop(k, None)
    config.update(fields, model_type="nemotron-nas", architectures=["DeciLMForCausalLM"],
                  block_configs=blocks)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return {"format": "vllm", "blocks": len(blocks), "num_attention_heads": fields["num_attention_heads"]}
