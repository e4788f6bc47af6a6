"""llama.cpp parity and the exporters, on tiny random models of Llama, Qwen2 and Gemma 3.

The GGUF file (f32) of every shape the harness produces runs in llama.cpp with the HF model's
perplexity on the same windows (within 0.5%; the logits agree to ~1e-3); shapes an engine
cannot hold are refused in one line naming why. Tests that run llama.cpp skip only when
llama-cpp-python is not importable (the `engines` extra, `make engines`)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from harness.evaluation.engine import available, engine_perplexity, engine_speed
from harness.evaluation.perplexity import perplexity
from harness.export import ExportError
from harness.export.gguf_file import write_gguf
from harness.export.run import main as export_main
from harness.export.vllm import block_configs, write_vllm
from harness.models.loader import save_model
from harness.models.tiny import tiny_model, tiny_tokenizer
from harness.pruning.blocks import remove_blocks, remove_sublayers
from harness.pruning.width import WidthPruneConfig, prune_width

needs_llama = pytest.mark.skipif(not available(), reason="llama-cpp-python not installed")
IDS = torch.randint(3, 256, (16 * 32,), generator=torch.Generator().manual_seed(0))
CALIB = IDS[:64].view(2, 32)


def width(model, scope):
    kw = {"layer_start": 1, "layer_end": -1, "scope": "global", "unit_ratio": 0.4} \
        if scope == "uneven" else {"layer_start": 0, "layer_end": 6, "unit_ratio": 0.5}
    prune_width(model, WidthPruneConfig(criterion="random", **kw), CALIB)
    return model


SHAPES = {
    "dense": lambda m: m,
    "depth": lambda m: remove_blocks(m, [1, 4]),
    "uniform_width": lambda m: width(m, "uniform"),
    "uneven_width": lambda m: width(m, "uneven"),
    "attn_removed": lambda m: remove_sublayers(m, [1, 2, 3], "attn"),
    "mlp_removed": lambda m: remove_sublayers(m, [2], "mlp"),
    "block_emptied": lambda m: remove_sublayers(remove_sublayers(m, [2, 3], "attn"), [3], "mlp"),
}
EXPECTED_ARCH = {"dense": "llama", "depth": "llama", "uniform_width": "llama"}
GEMMA_OK = ("dense", "depth", "uniform_width")


def model_(family, shape):
    return SHAPES[shape](tiny_model(family, layers=6, heads=8))


@needs_llama
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_engine_ppl_matches_hf(family, shape, tmp_path):
    model = model_(family, shape)
    path = tmp_path / "m.gguf"
    if family == "gemma3" and shape not in GEMMA_OK:
        with pytest.raises(ExportError, match="gemma3 graph"):
            write_gguf(model, tiny_tokenizer(), path)
        return
    info = write_gguf(model, tiny_tokenizer(), path, "f32")
    want = {"llama": EXPECTED_ARCH, "qwen2": {"dense": "qwen2", "depth": "qwen2"},
            "gemma3": dict.fromkeys(GEMMA_OK, "gemma3")}[family].get(shape, "deci")
    assert info["arch"] == want
    if shape == "block_emptied":
        assert info["dropped_blocks"] == [3] and info["zero_mlp_blocks"] == []
    if shape == "mlp_removed":
        assert info["zero_mlp_blocks"] == [2]
    bos = 1 if family == "gemma3" else None
    hf = perplexity(model, IDS, 32, progress=False, bos_id=bos)
    eng = engine_perplexity(path, IDS, 32, bos, threads=1)
    assert (eng["tokens"], eng["predicted"]) == (hf["tokens"], hf["predicted"])
    assert abs(eng["ppl"] / hf["ppl"] - 1) < 0.005, (eng["ppl"], hf["ppl"])


@needs_llama
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_half_and_q8_files_run_close(dtype, tmp_path):
    model = model_("llama", "uneven_width")
    write_gguf(model, tiny_tokenizer(), tmp_path / "m.gguf", dtype)
    hf = perplexity(model, IDS, 32, progress=False)
    eng = engine_perplexity(tmp_path / "m.gguf", IDS, 32, None, threads=1)
    assert abs(eng["ppl"] / hf["ppl"] - 1) < 0.05
    assert (tmp_path / "m.gguf").stat().st_size < 0.6 * _f32_size(model, tmp_path)


def _f32_size(model, tmp_path):
    write_gguf(model, tiny_tokenizer(), tmp_path / "f32.gguf", "f32")
    return (tmp_path / "f32.gguf").stat().st_size


@needs_llama
def test_engine_speed_reports_both_batches(tmp_path):
    write_gguf(model_("llama", "dense"), tiny_tokenizer(), tmp_path / "m.gguf")
    out = engine_speed(tmp_path / "m.gguf", threads=1, batch=4, prompt_len=16, gen_len=4,
                       warmup=0, repeats=1)
    assert set(out) == {"b1", "b4"}
    assert all(v > 0 for r in out.values() for v in r.values())


@needs_llama
def test_gguf_runs_alone_with_its_tokenizer(tmp_path):
    """The file carries the tokenizer: llama.cpp tokenizes text to the HF ids by itself."""
    import llama_cpp

    tok = tiny_tokenizer()
    write_gguf(model_("llama", "attn_removed"), tok, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, verbose=False, n_threads=1)
    try:
        text = "Pruned models, served."
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
            tok(text, add_special_tokens=False)["input_ids"]
    finally:
        llm.close()


# ---- vLLM block configs ---------------------------------------------------------------------
def test_vllm_block_configs_hold_depth_sublayers_and_kv_groups(tmp_path):
    model = remove_sublayers(tiny_model("qwen2", layers=6, heads=8), [1], "attn")
    remove_sublayers(model, [1, 4], "mlp")  # block 1 empty: dropped
    out = write_vllm(model, tiny_tokenizer(), tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    assert cfg["architectures"] == ["DeciLMForCausalLM"] and cfg["num_hidden_layers"] == 5
    blocks = cfg["block_configs"]
    assert [b["attention"]["no_op"] for b in blocks] == [False] * 5
    assert [b["ffn"]["no_op"] for b in blocks] == [False, False, False, True, False]
    assert all(b["attention"]["n_heads_in_group"] == 2 for b in blocks)
    assert out["blocks"] == 5 and cfg["qkv_bias"] is True
    with safe_open(str(tmp_path / "v" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in names}
    assert not any(n.startswith("model.layers.5.") for n in names)
    assert sum(".3.mlp." in n for n in names) == 0
    hd = cfg["head_dim"]
    for b, block in enumerate(blocks):  # every tensor as vLLM sizes it from the block config
        layer = {n.split(f"layers.{b}.", 1)[1]: s for n, s in shapes.items()
                 if f".layers.{b}." in n}
        kv_rows = cfg["num_attention_heads"] // block["attention"]["n_heads_in_group"] * hd
        assert layer["self_attn.q_proj.bias"] == (cfg["num_attention_heads"] * hd,)
        assert layer["self_attn.k_proj.weight"][0] == layer["self_attn.v_proj.bias"][0] == kv_rows
        if not block["ffn"]["no_op"]:
            inter = block["ffn"]["intermediate_size"]
            assert layer["mlp.up_proj.weight"][0] == layer["mlp.down_proj.weight"][1] == inter


def test_vllm_refuses_uneven_query_heads():
    model = model_("llama", "uneven_width")
    with pytest.raises(ExportError, match="one query-head count"):
        block_configs(model)


def test_vllm_refuses_gemma():
    with pytest.raises(ExportError, match="gemma3_text is not one"):
        block_configs(tiny_model("gemma3"))


# ---- the command ----------------------------------------------------------------------------
@needs_llama
def test_export_command_writes_into_the_run_dir(tmp_path, capsys):
    run = tmp_path / "run"
    save_model(model_("llama", "attn_removed"), tiny_tokenizer(), run / "model")
    assert export_main([str(run), "--dtype", "f16"]) == 0
    assert (run / "export" / "model-f16.gguf").stat().st_size > 0
    assert json.loads((run / "export" / "export.json").read_text())["model-f16.gguf"]["arch"] == "deci"
    assert not [p for p in (run / "export").iterdir() if p.name.startswith(".")]
    save_model(model_("gemma3", "attn_removed"), tiny_tokenizer(), run / "model")
    capsys.readouterr()
    assert export_main([str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gemma3 graph" in err[0]


@needs_llama
def test_recovered_model_exports_with_its_lora_merged(tmp_path):
    """A LoRA-recovered run dir holds the merged model; its GGUF has the merged weights."""
    from harness.evaluation.engine import engine_perplexity as eng_ppl
    from harness.recovery.methods.lora import LoraConfig, attach_lora, merge_lora

    pruned = model_("llama", "attn_removed")
    with torch.no_grad():
        before = pruned(IDS[None, :64]).logits
    peft = attach_lora(pruned, LoraConfig())
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    merged = merge_lora(peft)
    with torch.no_grad():
        assert (merged(IDS[None, :64]).logits - before).abs().max() > 0.1  # the adapters count
    after = perplexity(merged, IDS, 32, progress=False)["ppl"]
    run = tmp_path / "run"
    save_model(merged, tiny_tokenizer(), run / "model")
    assert export_main([str(run)]) == 0
    got = eng_ppl(run / "export" / "model-f32.gguf", IDS, 32, None, threads=1)["ppl"]
    assert abs(got / after - 1) < 0.005


def test_export_of_a_run_that_changed_no_model_reads_its_config(tmp_path, tiny_dir):
    """A dense run dir has no model/: the export takes the model its config.yaml names."""
    from harness.export.run import model_dir_of

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model:\n  name: smollm2_135m\n  path: {tiny_dir}\n")
    assert model_dir_of(run) == str(tiny_dir)
    assert export_main([str(tmp_path / "missing")]) == 2
