"""Recovery: LoRA / CPT / CPT+LoRA / KD on tiny seeded models and a learnable synthetic corpus."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from harness.models.adapters import adapter_for
from harness.models.tiny import tiny_model
from harness.recovery.data import (
    IGNORE,
    CyclicDataset,
    alpaca_prompt,
    budget_slice,
    encode_instructions,
    load_examples,
    pack,
)
from harness.recovery.methods.kd import distill_loss
from harness.recovery.methods.lora import attach_lora, merge_lora
from harness.recovery.registry import settings
from harness.recovery.run import phase_steps, recover
from harness.recovery.trainer import MARKER, NonFiniteLossError, checkpoint_time, read_log

SEQ, BS, STEPS = 32, 8, 16
TOKENS = SEQ * BS * STEPS
METHODS = ("cpt", "lora", "cpt_lora", "kd")


def corpus(segments: int, seed: int) -> torch.Tensor:
    """Runs of 16 consecutive ids from random starts: the next id is (mostly) this id + 1."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 253, (segments,), generator=g)
    return torch.cat([(s + torch.arange(16)) % 253 + 3 for s in starts])


TRAIN, HELD_OUT = corpus(400, 0), corpus(64, 1)


@torch.no_grad()
def ppl(model, ids: torch.Tensor) -> float:
    blocks = pack(ids, SEQ).input_ids
    return math.exp(model.eval()(blocks, labels=blocks).loss.item())


def make_cfg(name: str = "cpt", **kw):
    base = dict(
        name=name,
        tokens=TOKENS,
        seq_len=SEQ,
        batch_size=BS,
        lr=3e-3,
        lora_lr=1e-2,
        warmup_ratio=0.0,
        save_steps=8,
        disable_tqdm=True,
    )
    return settings(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each method once from the same seeded model; KD distils the CPT-recovered model."""
    out, results = tmp_path_factory.mktemp("runs"), {}
    for name in METHODS:
        teacher = copy.deepcopy(results["cpt"][0]) if name == "kd" else None
        model, metrics = recover(tiny_model(seed=0), make_cfg(name), TRAIN, out / name, teacher)
        results[name] = (model, metrics, out / name)
    return results


# ---- config, data, budgets ----------------------------------------------------------------


@pytest.mark.parametrize(
    "method,field,value,needle",
    [
        ("cpt", "tokens", 0, "recover.tokens"),
        ("cpt", "lr", 0.0, "recover.lr"),
        ("lora", "lora_lr", -1.0, "recover.lora_lr"),
        ("cpt_lora", "cpt_fraction", 1.0, "recover.cpt_fraction"),
        ("kd", "kd_alpha", 1.5, "recover.kd_alpha"),
        ("kd", "lr", -1.0, "recover.lr"),
        ("cpt", "warmup_ratio", 1.0, "recover.warmup_ratio"),
        ("cpt", "data", "corpus.csv", "recover.data"),
        ("lora", "bf16", "maybe", "recover.bf16"),
        ("cpt_lora", "lora_targets", [], "recover.lora_targets"),
    ],
)
def test_validate_rejects_bad_values(method, field, value, needle):
    cfg = make_cfg(**{"name": method, field: value})
    with pytest.raises(ValueError, match=needle) as err:
        cfg.validate()
    assert "\n" not in str(err.value)


def test_each_method_has_its_own_fields_and_the_schema_has_them_all():
    from dataclasses import fields

    from harness.recovery.registry import schema

    assert settings().key_fields() == {"name": "none"} and phase_steps(settings()) == []
    with pytest.raises(ValueError, match="'qlora' is not a recovery method"):
        settings("qlora")
    with pytest.raises(ValueError, match="recover.lora_rank is not a recovery setting"):
        settings("lora", lora_rank=4)
    lora, cpt = settings("lora", lr=0.5, kd_alpha=0.2), settings("cpt", lora_r=4)
    assert "lr" not in lora.key_fields() and not hasattr(lora, "kd_alpha") and lora.lora_r == 8
    assert "lora_r" not in cpt.key_fields() and cpt.lr == 1e-4
    both = settings("cpt_lora").key_fields()
    assert {"lr", "lora_lr", "lora_r", "cpt_fraction"} <= set(both) and "kd_alpha" not in both
    assert {f.name for f in fields(schema())} >= {"lr", "lora_lr", "kd_alpha", "cpt_fraction"}


def test_none_returns_model_unchanged(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, metrics = recover(model, settings(), None, tmp_path)
    assert out is model and metrics == {}
    assert all(torch.equal(before[k], v) for k, v in out.state_dict().items())


def test_budget_to_steps_and_cpt_lora_split():
    assert phase_steps(make_cfg("cpt")) == [("cpt", STEPS)]
    assert phase_steps(make_cfg("cpt", tokens=TOKENS + SEQ * BS - 1)) == [("cpt", STEPS)]
    assert phase_steps(make_cfg("kd", grad_accum=2), world=2) == [("kd", STEPS // 4)]
    assert phase_steps(make_cfg("cpt_lora", cpt_fraction=0.25)) == [("cpt", 4), ("lora", 12)]
    # honoured to one step: never more tokens than the budget, fewer by less than one step
    for tokens in (SEQ * BS, SEQ * BS + 1, 3 * SEQ * BS - 1):
        (_, steps), = phase_steps(make_cfg("lora", tokens=tokens))
        assert 0 <= tokens - steps * SEQ * BS < SEQ * BS
    assert phase_steps(make_cfg("cpt_lora", tokens=2 * SEQ * BS)) == [("cpt", 1), ("lora", 1)]
    # below one step (per phase) is refused with the minimum, never silently rounded up
    with pytest.raises(ValueError, match=f"at least {SEQ * BS}"):
        phase_steps(make_cfg("cpt", tokens=1))
    with pytest.raises(ValueError, match=f"at least {2 * SEQ * BS}"):
        phase_steps(make_cfg("cpt_lora", tokens=2 * SEQ * BS - 1))


def test_pack_budget_slice_and_cyclic_dataset():
    ids = torch.arange(100)
    ex = pack(ids, 32)
    assert ex.input_ids.shape == (3, 32) and torch.equal(ex.input_ids[1], torch.arange(32, 64))
    assert torch.equal(ex.labels, ex.input_ids) and bool(ex.attention_mask.all())
    assert budget_slice(ids, 40).tolist() == list(range(40))
    ds = CyclicDataset(ex, start=2, count=4)
    assert len(ds) == 4
    assert [int(ds[i]["input_ids"][0]) for i in range(4)] == [64, 0, 32, 64]
    with pytest.raises(ValueError, match="shorter than one block"):
        pack(torch.arange(10), 32)


def test_text_and_jsonl_are_packed_like_wiki_train(tmp_path):
    tok = word_tokenizer(["alpha beta gamma delta", "epsilon zeta"])
    docs = ["alpha beta gamma delta", "epsilon zeta"]
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    want = tok.encode("\n\n".join(docs), add_special_tokens=False)
    for name in ("c.txt", "c.jsonl"):
        ex = load_examples(str(tmp_path / name), 3, tokenizer=tok)
        assert ex.input_ids.reshape(-1).tolist() == want[: len(want) // 3 * 3]


# ---- the four methods ---------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_method_lowers_train_loss_and_held_out_ppl(runs, method):
    model, metrics, out = runs[method]
    rows = read_log(out / "train_log.csv")
    assert len(rows) == STEPS and metrics["recover/steps"] == STEPS
    assert metrics["recover/final_loss"] < 0.97 * metrics["recover/first_loss"]
    baseline = ppl(tiny_model(seed=0), HELD_OUT)
    assert ppl(model, HELD_OUT) < 0.97 * baseline
    assert not any("lora" in n for n, _ in model.named_modules())  # plain model again


def test_equal_budget_gives_equal_token_counts(runs):
    seen = {m: runs[m][1]["recover/tokens_seen"] for m in METHODS}
    assert set(seen.values()) == {TOKENS}, seen
    for m in METHODS:
        last = read_log(runs[m][2] / "train_log.csv")[-1]
        assert last["tokens_seen"] == TOKENS and last["step"] == STEPS
    split = runs["cpt_lora"][1]
    assert split["recover/cpt/tokens_seen"] == split["recover/lora/tokens_seen"] == TOKENS // 2


def test_kd_loss_is_forward_kl_on_target_positions():
    torch.manual_seed(0)
    t, s = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.ones(2, 5, dtype=torch.long)
    assert distill_loss(t, t, labels).item() == pytest.approx(0.0, abs=1e-6)
    pt, ls = t[:, :-1].softmax(-1), s[:, :-1].log_softmax(-1)
    want = (pt * (pt.log() - ls)).sum(-1).mean()
    assert distill_loss(s, t, labels).item() == pytest.approx(want.item(), rel=1e-5)
    labels[:, 1:] = IGNORE
    assert distill_loss(s, t, labels).item() == 0.0
    with pytest.raises(ValueError, match="teacher"):
        recover(tiny_model(), make_cfg("kd"), TRAIN, "unused", teacher=None)


# ---- LoRA ---------------------------------------------------------------------------------


def test_lora_merge_gives_the_adapter_models_logits():
    base = tiny_model(seed=0)
    ids = HELD_OUT[:64].view(2, 32)
    with torch.no_grad():
        before = base(ids).logits
    peft_model = attach_lora(base, make_cfg("lora"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)  # lora_B starts at zero: make the adapters matter
        adapted = peft_model.eval()(ids).logits
    merged = merge_lora(peft_model)
    with torch.no_grad():
        after = merged.eval()(ids).logits
    assert (adapted - before).abs().max() > 1e-2
    torch.testing.assert_close(after, adapted, atol=1e-5, rtol=0)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n in merged.state_dict())


def make_uneven(model):
    """Layer 1 keeps 2 of 4 query heads, 1 of 2 KV heads and 48 of 128 MLP channels."""
    adapter = adapter_for(model)
    layer = adapter.layers(model)[1]
    adapter.prune_attention(layer, [0, 1], [0])
    adapter.prune_mlp(layer, range(48))
    return model


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_lora_recovers_a_model_with_uneven_layer_shapes(tmp_path):
    model = make_uneven(tiny_model(seed=0))
    want, start = shapes(model), ppl(model, HELD_OUT)
    assert sorted(v for k, v in want.items() if k.startswith("model.layers.1.")) == sorted(
        [(32, 64), (16, 64), (16, 64), (64, 32), (48, 64), (48, 64), (64, 48), (64,), (64,)])
    out, metrics = recover(model, make_cfg("lora", tokens=SEQ * BS * 8), TRAIN, tmp_path)
    assert shapes(out) == want
    assert metrics["recover/final_loss"] < metrics["recover/first_loss"]
    assert ppl(out, HELD_OUT) < start


@pytest.mark.parametrize("method", ["cpt", "lora"])
def test_gradient_checkpointing_trains_and_is_switched_off_after(tmp_path, method):
    cfg = make_cfg(method, tokens=SEQ * BS * 2, gradient_checkpointing=True)
    model, metrics = recover(tiny_model(seed=0), cfg, TRAIN, tmp_path)
    assert metrics["recover/steps"] == 2 and math.isfinite(metrics["recover/final_loss"])
    assert not model.is_activation_checkpointing


# ---- resume and guard rails ---------------------------------------------------------------


class CrashAt(TrainerCallback):
    """Simulates a killed job: raises at the end of optimizer step `step` of phase `phase`."""

    def __init__(self, phase: str, step: int):
        self.phase, self.step = phase, step

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.phase) and state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at {self.phase} step {state.global_step}")


RESUME_CFG = dict(tokens=SEQ * BS * 8, save_steps=2, lora_dropout=0.0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return recover(tiny_model(seed=0), make_cfg("cpt_lora", **RESUME_CFG), TRAIN, out)[0]


@pytest.mark.parametrize("phase", ["cpt", "lora"])
def test_killed_run_resumes_from_last_complete_checkpoint(tmp_path, uninterrupted, phase):
    cfg = make_cfg("cpt_lora", **RESUME_CFG)
    with pytest.raises(KeyboardInterrupt):
        recover(tiny_model(seed=0), cfg, TRAIN, tmp_path, callbacks=[CrashAt(phase, 3)])
    half_written = tmp_path / phase / "checkpoint-3"  # a save the kill cut short: no marker
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"truncated")
    spent_before_kill = checkpoint_time(tmp_path / phase / "checkpoint-2")
    assert spent_before_kill > 0
    model, metrics = recover(tiny_model(seed=0), cfg, TRAIN, tmp_path)
    assert not half_written.exists()
    assert metrics[f"recover/{phase}/resumed_from_step"] == 2
    # time counts the kept work of the killed attempt too, so tokens/s is not inflated by resume
    assert metrics[f"recover/{phase}/prior_time_s"] == spent_before_kill
    assert metrics[f"recover/{phase}/time_s"] > spent_before_kill
    assert metrics["recover/time_s"] > spent_before_kill
    assert metrics["recover/steps"] == 8 and metrics["recover/tokens_seen"] == 8 * SEQ * BS
    assert [r["step"] for r in read_log(tmp_path / phase / "train_log.csv")] == [1, 2, 3, 4]
    for (name, got), want in zip(
        model.state_dict().items(), uninterrupted.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("minutes, saved", [(1e-9, [4]), (0.0, [])])
def test_time_cadence_keeps_only_the_last_complete_checkpoint(tmp_path, minutes, saved):
    """save_minutes ~0: a save after every step, each deleting the one before once marked;
    save_minutes=0 (and no save_steps): no checkpoint at all."""
    cfg = make_cfg("cpt", tokens=SEQ * BS * 4, save_steps=0, save_minutes=minutes)
    recover(tiny_model(seed=0), cfg, TRAIN, tmp_path)
    found = sorted(p.name for p in (tmp_path / "cpt").glob("checkpoint-*"))
    assert found == [f"checkpoint-{s}" for s in saved]
    for name in found:
        assert (tmp_path / "cpt" / name / MARKER).read_text().startswith(f"step {saved[-1]}\n")
        assert (tmp_path / "cpt" / name / "optimizer.pt").exists()  # resumable: Adam state too


class NaNAfter:
    """Forward hook on the LM head: the `n+1`-th training forward returns NaN logits."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        return output * float("nan") if self.calls > self.n else output


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    model = tiny_model(seed=0)
    model.lm_head.register_forward_hook(NaNAfter(3))
    cfg = make_cfg("cpt", tokens=SEQ * BS * 8, save_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 4; ") as err:
        recover(model, cfg, TRAIN, tmp_path)
    last = tmp_path / "cpt" / "checkpoint-3"
    assert str(err.value).endswith(f"last good checkpoint: {last}")
    assert (last / MARKER).exists() and not (tmp_path / "cpt" / "checkpoint-4").exists()
    weights = load_file(last / "model.safetensors")
    assert len(weights) > 0 and all(bool(w.isfinite().all()) for w in weights.values())


def test_diverging_lr_raises_non_finite_loss(tmp_path):
    cfg = make_cfg("cpt", tokens=SEQ * BS * 6, lr=1e10, max_grad_norm=0.0)
    with pytest.raises(NonFiniteLossError, match=r"at step \d+; last good checkpoint"):
        recover(tiny_model(seed=0), cfg, TRAIN, tmp_path)


# ---- instruction data ---------------------------------------------------------------------


def word_tokenizer(texts: list[str]):
    """A WordLevel tokenizer over the words of `texts` (and the Alpaca template), in-process."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    template = alpaca_prompt({"instruction": "x", "input": "y"}) + alpaca_prompt(
        {"instruction": "x"}
    )
    words = sorted({w for t in [*texts, template] for w, _ in pre.pre_tokenize_str(t)})
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {w: i + 4 for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


RECORDS = [
    {"instruction": "Name a colour .", "input": "", "output": "red is a colour"},
    {"instruction": "Add the numbers .", "input": "two and three", "output": "five"},
    {"instruction": "Say hello .", "output": "hello there friend"},
]


def test_alpaca_labels_cover_only_the_response(tmp_path):
    tok = word_tokenizer(
        [r["instruction"] + " " + r.get("input", "") + " " + r["output"] for r in RECORDS]
    )
    ex = encode_instructions(RECORDS, tok, seq_len=64)
    for i, record in enumerate(RECORDS):
        n_prompt = 1 + len(tok.encode(alpaca_prompt(record), add_special_tokens=False))
        answer = tok.encode(record["output"], add_special_tokens=False) + [tok.eos_token_id]
        end = n_prompt + len(answer)
        assert ex.input_ids[i, 0] == tok.bos_token_id
        assert (ex.labels[i, :n_prompt] == IGNORE).all()
        assert (
            ex.labels[i, n_prompt:end].tolist() == answer == ex.input_ids[i, n_prompt:end].tolist()
        )
        assert (ex.labels[i, end:] == IGNORE).all() and (
            ex.input_ids[i, end:] == tok.pad_token_id
        ).all()
        assert ex.attention_mask[i].sum() == end
    assert "### Input:" in alpaca_prompt(RECORDS[1]) and "### Input:" not in alpaca_prompt(
        RECORDS[0]
    )

    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(RECORDS))
    cfg = make_cfg("lora", data=str(path), seq_len=64, batch_size=3, tokens=64 * 3 * 2,
                   epochs_ok=True)  # 6 examples from 3 records: twice over
    _, metrics = recover(tiny_model(seed=0), cfg, None, tmp_path / "run", tokenizer=tok)
    assert metrics["recover/steps"] == 2
    assert metrics["recover/tokens_seen"] == 2 * int(ex.attention_mask.sum())  # non-pad tokens
