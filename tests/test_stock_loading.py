"""A checkpoint that only the harness can build right (removed attention or MLP sublayers, uneven
per-layer widths) fails loudly in stock `from_pretrained` and loads exactly through the harness;
a checkpoint saved in the older format (stock model_type) still loads through the harness."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from harness.models.loader import ModelConfig, check_loadable, load_model, save_model
from harness.models.tiny import tiny_model, tiny_tokenizer
from harness.models.uneven import MARKER, is_uneven, load_uneven
from harness.pruning.blocks import remove_sublayers
from harness.pruning.width import WidthPruneConfig, prune_width

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def uneven(model):
    """Global random width pruning: per-layer head counts and MLP sizes differ."""
    cfg = WidthPruneConfig(criterion="random", layer_start=1, layer_end=-1, unit_ratio=0.4,
                           scope="global")
    prune_width(model, cfg, IDS)
    assert is_uneven(model.config)
    return model


CASES = {
    "attn_removed": lambda m: remove_sublayers(m, [1, 2], "attn"),
    "mlp_removed": lambda m: remove_sublayers(m, [2], "mlp"),
    "uneven_width": uneven,
}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_stock_load_fails_loudly_harness_load_is_exact(family, case, tmp_path):
    model = CASES[case](tiny_model(family, layers=4, heads=8))
    out = save_model(model, tiny_tokenizer(), tmp_path / "m")
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == MARKER and raw["harness_model_type"] == model.config.model_type
    with pytest.raises(ValueError, match=MARKER):
        AutoModelForCausalLM.from_pretrained(out)
    with pytest.raises(ValueError, match=MARKER):
        AutoConfig.from_pretrained(out)
    loaded = load_model(ModelConfig(path=str(out), attn_implementation="eager"))[0]
    assert loaded.config.model_type == model.config.model_type
    torch.testing.assert_close(logits(loaded), logits(model), atol=0, rtol=0)


def test_old_format_checkpoint_still_loads(tmp_path):
    """Saved before the marker (model_type llama + harness_skip_attn): the harness loads it."""
    model = remove_sublayers(tiny_model("llama"), [1], "attn")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    check_loadable(tmp_path)
    torch.testing.assert_close(logits(load_uneven(tmp_path, attn_implementation="eager")), logits(model), atol=0, rtol=0)


def test_plain_checkpoint_keeps_stock_model_type(tmp_path):
    out = save_model(tiny_model("llama"), tiny_tokenizer(), tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    AutoModelForCausalLM.from_pretrained(out)
