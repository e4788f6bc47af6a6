"""Training corpora through HF datasets: shards, the cached memory-mapped token file, the
repetition refusal, and the held-out curve while training (tiny models, byte tokenizer)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness.cache.store import StageCache
from harness.data.text import token_ids
from harness.models.tiny import tiny_model, tiny_tokenizer
from harness.recovery.corpus import corpus_identity, prepare, shard_files
from harness.recovery.data import pack
from harness.recovery.registry import settings
from harness.recovery.run import recover
from harness.recovery.trainer import EVAL_LOG, read_log

SEQ, BS = 32, 4
DOCS = [f"Doc {i}: {' '.join(f'w{(i * 7 + j) % 23}' for j in range(20 + i % 9))}." for i in range(60)]


def cfg(data, **kw):
    base = dict(name="cpt", data=str(data), tokens=SEQ * BS * 8, seq_len=SEQ, batch_size=BS,
                lr=3e-3, warmup_ratio=0.0, save_minutes=0, disable_tqdm=True, logging_steps=1)
    return settings(**{**base, **kw})


@pytest.fixture
def corpora(tmp_path):
    """The same 60 documents as one .jsonl file and as a directory of jsonl, parquet and txt
    shards (4 of them, in name order)."""
    one = tmp_path / "one.jsonl"
    one.write_text("\n".join(json.dumps({"text": d}) for d in DOCS) + "\n")
    shards = tmp_path / "shards"
    (shards / "sub").mkdir(parents=True)
    (shards / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS[:15]))
    pd.DataFrame({"text": DOCS[15:30]}).to_parquet(shards / "b.parquet")
    (shards / "c.txt").write_text("\n\n".join(DOCS[30:45]) + "\n")
    pd.DataFrame({"text": DOCS[45:]}).to_parquet(shards / "sub" / "d.parquet")
    (shards / "notes.md").write_text("not a shard")
    return one, shards


@pytest.fixture
def held(tmp_path):
    """Held-out text for the curves: other documents than the training corpus's."""
    path = tmp_path / "held.txt"
    path.write_text("\n\n".join(d.replace("Doc", "Held") for d in DOCS[::-7]))
    return path


def test_shards_give_the_one_file_token_stream_and_loss_curve(corpora, tmp_path):
    one, shards = corpora
    tok = tiny_tokenizer()
    assert [p.name for p in shard_files(str(shards))] == ["a.jsonl", "b.parquet", "c.txt",
                                                         "d.parquet"]
    cache = StageCache(tmp_path / "cache")
    a, b = prepare(cfg(one), tok, cache), prepare(cfg(shards), tok, cache)
    want = tok("\n\n".join(DOCS), add_special_tokens=False)["input_ids"]
    assert a.ids().tolist() == want == b.ids().tolist()
    assert isinstance(a.ids(), np.memmap) and a.path != b.path  # two keys, equal contents
    glob = prepare(cfg(f"{shards}/**/*.*"), tok, cache)  # a glob: same shards, same entry
    assert glob.path == b.path and len(cache.computed) == 2
    curves = []
    for data in (one, shards):
        _, metrics = recover(tiny_model(seed=0), cfg(data), None, tmp_path / f"run-{data.name}",
                             tokenizer=tok, cache=cache)
        curves.append([r["loss"] for r in read_log(tmp_path / f"run-{data.name}" / "train_log.csv")])
        assert metrics["recover/epochs"] == pytest.approx(8 * BS / (len(want) // SEQ))
    assert len(curves[0]) == 8 and curves[0] == curves[1]
    assert len(cache.computed) == 2  # training reused the prepared files


def test_prepared_file_is_keyed_by_content_and_reused(corpora, tmp_path):
    one, shards = corpora
    tok = tiny_tokenizer()
    moved = tmp_path / "moved"
    shards.rename(moved)
    before = corpus_identity(cfg(moved))
    (moved / "c.txt").write_text("\n\n".join(DOCS[30:44]) + "\n")
    assert corpus_identity(cfg(moved)) != before
    cache = StageCache(tmp_path / "cache")
    first = prepare(cfg(one), tok, cache)
    again = prepare(cfg(one), tok, StageCache(tmp_path / "cache"))
    assert again.path == first.path and again.tokens == first.tokens
    assert corpus_identity(cfg(one)).startswith("sha256:")  # a single file: keyed as before


def test_wiki_train_stream_is_the_protocol_tokenization(tmp_path):
    tok = tiny_tokenizer()
    prepared = prepare(cfg("wiki_train"), tok, StageCache(tmp_path / "cache"))
    want = token_ids("wiki_train", tok)
    assert prepared.tokens == want.numel()
    assert torch.equal(torch.from_numpy(np.array(prepared.ids(), dtype=np.int64)), want)
    assert corpus_identity(cfg("wiki_train")) == "wiki_train"


def test_budget_above_the_corpus_is_refused_unless_allowed(corpora, tmp_path):
    one, _ = corpora
    tok = tiny_tokenizer()
    cache = StageCache(tmp_path / "cache")
    n = prepare(cfg(one), tok, cache).tokens
    big = cfg(one, tokens=(n // SEQ + BS) * SEQ)
    with pytest.raises(ValueError, match=f"recover.tokens={big.tokens} is above the corpus.*"
                                         f"holds {n} tokens"):
        recover(tiny_model(seed=0), big, None, tmp_path / "run", tokenizer=tok, cache=cache)
    assert not (tmp_path / "run").exists()
    ok = cfg(one, tokens=big.tokens, epochs_ok=True, logging_steps=0)
    _, metrics = recover(tiny_model(seed=0), ok, None, tmp_path / "run", tokenizer=tok,
                         cache=cache)
    assert metrics["recover/epochs"] > 1
    assert ok.key_fields() == big.key_fields()  # permission, not a different result


def test_held_out_curve_is_logged_and_does_not_change_training(corpora, held, tmp_path):
    one, _ = corpora
    tok = tiny_tokenizer()
    cache = StageCache(tmp_path / "cache")
    plain = cfg(one, tokens=SEQ * BS * 7)
    curve = cfg(one, tokens=SEQ * BS * 7, eval_every=SEQ * BS * 3, eval_data=str(held),
                eval_tokens=SEQ * 6)
    assert "eval_every" not in plain.key_fields() and curve.key_fields()["eval_every"]
    m0, _ = recover(tiny_model(seed=0), plain, None, tmp_path / "plain", tokenizer=tok,
                    cache=cache)
    m1, _ = recover(tiny_model(seed=0), curve, None, tmp_path / "curve", tokenizer=tok,
                    cache=cache)
    losses = [read_log(tmp_path / d / "train_log.csv") for d in ("plain", "curve")]
    assert [r["loss"] for r in losses[0]] == [r["loss"] for r in losses[1]]
    rows = read_log(tmp_path / "curve" / EVAL_LOG, ("step", "tokens_seen", "eval_loss",
                                                     "eval_ppl"))
    assert [int(r["step"]) for r in rows] == [0, 3, 6, 7]
    assert [int(r["tokens_seen"]) for r in rows] == [0, 3 * SEQ * BS, 6 * SEQ * BS, 7 * SEQ * BS]
    windows = pack(token_ids(str(held), tok)[: 6 * SEQ], SEQ).input_ids
    with torch.no_grad():
        final = m1.eval()(windows, labels=windows).loss.item()
    assert rows[-1]["eval_loss"] == pytest.approx(final, rel=1e-4)
    assert rows[-1]["eval_ppl"] == pytest.approx(math.exp(final), rel=1e-4)
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


def test_constant_schedule_curve_point_equals_a_separate_run(corpora, held, tmp_path):
    """schedule=constant, no warmup, corpus order: the point at 4 steps of an 8-step run is
    the model a separate 4-step run ends with (cosine would not agree: its lr depends on the
    budget)."""
    one, _ = corpora
    tok = tiny_tokenizer()
    cache = StageCache(tmp_path / "cache")
    same = dict(schedule="constant", shuffle=False, eval_every=SEQ * BS * 4, eval_data=str(held),
                eval_tokens=SEQ * 4)
    recover(tiny_model(seed=0), cfg(one, tokens=SEQ * BS * 8, **same), None, tmp_path / "long",
            tokenizer=tok, cache=cache)
    recover(tiny_model(seed=0), cfg(one, tokens=SEQ * BS * 4, **same), None, tmp_path / "short",
            tokenizer=tok, cache=cache)
    names = ("step", "tokens_seen", "eval_loss", "eval_ppl")
    long, short = (read_log(tmp_path / d / EVAL_LOG, names) for d in ("long", "short"))
    point = next(r for r in long if r["step"] == 4)
    assert point["eval_loss"] == pytest.approx(short[-1]["eval_loss"], rel=1e-5)
    assert cfg(one, schedule="wsd").key_fields()["decay_ratio"] == 0.2


def test_killed_run_resumes_at_the_same_example_with_the_same_curves(corpora, held, tmp_path):
    """A run killed after step 5 resumes from its step-4 checkpoint: the loss and held-out
    curves equal an uninterrupted run's (same examples in the same order), without a repeated
    point."""
    from test_recovery import CrashAt

    one, _ = corpora
    tok = tiny_tokenizer()
    cache = StageCache(tmp_path / "cache")
    run = cfg(one, tokens=SEQ * BS * 8, save_steps=2, eval_every=SEQ * BS * 3,
              eval_data=str(held), eval_tokens=SEQ * 4)
    recover(tiny_model(seed=0), run, None, tmp_path / "ref", tokenizer=tok, cache=cache)
    with pytest.raises(KeyboardInterrupt):
        recover(tiny_model(seed=0), run, None, tmp_path / "cut", tokenizer=tok, cache=cache,
                callbacks=[CrashAt("cpt", 5)])
    _, metrics = recover(tiny_model(seed=0), run, None, tmp_path / "cut", tokenizer=tok,
                         cache=cache)
    assert metrics["recover/cpt/resumed_from_step"] == 4
    names = ("step", "tokens_seen", "eval_loss", "eval_ppl")
    for log, fields in (("train_log.csv", ("step", "loss", "lr", "tokens_seen")),
                        (EVAL_LOG, names)):
        a, b = (read_log(tmp_path / d / log, fields) for d in ("ref", "cut"))
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for x, y in zip(a, b, strict=True):
            for k in fields:
                assert x[k] == pytest.approx(y[k], rel=1e-5), (log, k, x, y)
