import json

import pytest
import torch

from harness.models.loader import ModelConfig, load_model, save_model
from harness.models.params import count_params
from harness.models.tiny import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_saved_model_reloads_to_identical_logits(tmp_path, arch):
    model = tiny_model(arch, tie=arch == "llama")
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = model(ids).logits
    out = save_model(model, tiny_tokenizer(), tmp_path / "m", plan={"method": "none"})
    assert json.loads((out / "prune_plan.json").read_text()) == {"method": "none"}
    assert (out / "model.safetensors").exists()
    loaded, tok = load_model(ModelConfig(path=str(out), attn_implementation="eager"))
    text = "Hello, pruned world!"
    assert tok(text, add_special_tokens=False)["input_ids"] == tiny_tokenizer()(
        text, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)


def test_save_is_atomic_and_replaces(tmp_path):
    out = save_model(tiny_model("llama"), None, tmp_path / "m")
    save_model(tiny_model("llama", seed=1), None, out)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no leftover temp dirs


def test_shape_only_model_has_real_shape_and_no_tokenizer():
    model, tok = load_model("smollm2_135m_shape")
    assert tok is None
    assert count_params(model)["total"] == 134_515_008


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="choose from .*llama2_7b_shape"):
        load_model(ModelConfig(name="gpt9"))


def test_missing_local_path_fails_fast():
    with pytest.raises(ValueError, match="does not exist"):
        ModelConfig(path="/no/such/dir").validate()


def test_count_params_counts_tied_embeddings_once():
    tied, untied = tiny_model("llama", tie=True), tiny_model("llama", tie=False)
    assert count_params(untied)["total"] - count_params(tied)["total"] == 256 * 64
    assert count_params(tied)["nonembedding"] == count_params(untied)["nonembedding"]
