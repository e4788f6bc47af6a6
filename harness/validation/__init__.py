"""One pass over every input a run will touch, before any model loads.

`check_inputs(spec)` reads only headers and a little text: the model (validation/model.py:
config.json, every tensor's shape in the safetensors or `.bin` files, the tokenizer against the
vocabulary, the device and attention implementation), the evaluation, calibration and training
texts (validation/texts.py), sequence lengths against the model's positions, the token budget
against one optimizer step, what the pruning method needs from the model, that the run measures
something, and the results, cache and asset directories (validation/paths.py, by trying a
write). Each failure is an `InputError`: one line naming the key and the fix. The CLI prints it
and exits with code 2, having written nothing.
"""

from __future__ import annotations

import os

from harness.assets import cache_root
from harness.recovery.registry import METHODS
from harness.recovery.run import min_tokens
from harness.validation.errors import InputError, first_line
from harness.validation.model import (
    check_attention,
    check_device,
    check_model,
    check_vocab,
    expected_tensors,
    tokenizer,
)
from harness.validation.paths import (
    check_cache_dir,
    check_disk,
    check_results_dir,
    check_writable,
    model_stage_bytes,
)
from harness.validation.texts import check_repetition, check_text, check_training_data

__all__ = ["InputError", "check_disk", "check_inputs", "expected_tensors", "first_line",
           "model_stage_bytes"]


def check_inputs(spec) -> tuple[object, int]:
    """Check every input of `spec` (a RunSpec); return the starting model's transformers config
    and parameter count."""
    check_writable(cache_root(), "HARNESS_CACHE")  # embedded models and texts are fetched here
    check_device(spec.model)
    check_attention(spec.model)
    hf_config, params = check_model(spec.model)
    spec.prune.validate(hf_config)
    check_measures(spec)
    check_positions(spec, hf_config)
    check_budget(spec.recover)
    if spec.model.shape_only:
        check_shape_only(spec)
    else:
        tok = tokenizer(spec.model)
        check_vocab(tok, hf_config, spec.model)
        for source in spec.eval.ppl_sources:
            check_text(source, "eval.ppl_sources", tok, spec.eval.seq_len, "eval.seq_len",
                       windows=2)
        if spec.prune.name != "none":
            check_text(spec.data.calib_source, "data.calib_source", tok,
                       spec.data.calib_seq_len + 1, "data.calib_seq_len", per_document=True)
        if "training_data" in METHODS.get(spec.recover.name).needs and \
                spec.recover.data != "wiki_train":
            check_training_data(spec.recover, tok)
    check_results_dir(spec.results_dir)
    check_cache_dir(spec.cache_dir or cache_root() / "stages", "cache_dir")
    if not spec.model.shape_only and "training_data" in METHODS.get(spec.recover.name).needs:
        check_repetition(spec, tok)  # last: a large corpus is prepared into the cache here
    return hf_config, params


def check_measures(spec) -> None:
    """A run measures something besides its size: perplexity (real weights), zero-shot or
    speed; else its row would hold no result."""
    ev = spec.eval
    if (ev.ppl_sources and not spec.model.shape_only) or ev.zeroshot.enabled or ev.speed.enabled:
        return
    what = ("a shape-only model has random weights: enable eval.speed (eval=speed)"
            if spec.model.shape_only else "give eval.ppl_sources, or eval=full / eval=speed")
    raise InputError(f"nothing to measure: {what}")


def check_shape_only(spec) -> None:
    """Random weights and no tokenizer: a criterion that reads calibration text cannot run."""
    needs = getattr(spec.prune, "needs_calibration", lambda: False)()
    if needs:
        raise InputError(f"model={spec.model.name} has random weights and no tokenizer: "
                         f"prune.criterion={spec.prune.criterion} needs calibration text; use a "
                         "weight-only criterion (magnitude, l1, l2, last, random) for speed studies")


def check_positions(spec, hf_config) -> None:
    """Every sequence the run scores or trains on fits the model's position embeddings (speed
    runs may go past them: they time random prompts, not quality)."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    if not limit:
        return
    lengths = [("eval.seq_len", spec.eval.seq_len, True),
               ("data.calib_seq_len", spec.data.calib_seq_len, spec.prune.name != "none"),
               ("recover.seq_len", spec.recover.seq_len, spec.recover.name != "none")]
    for key, value, used in lengths:
        if used and value > limit:
            raise InputError(f"{key}={value} exceeds the model's max_position_embeddings="
                             f"{limit}: lower it to at most {limit}")


def check_budget(cfg, world: int | None = None) -> None:
    """The token budget buys at least one optimizer step per phase (never silently more)."""
    phases = [p.name for p in METHODS.get(cfg.name).phases]
    if not phases:
        return
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    need = min_tokens(cfg, world)
    if cfg.tokens < need:
        step = (f"recover.seq_len x batch_size x grad_accum{' x world size' * (world > 1)} = "
                f"{cfg.seq_len} x {cfg.batch_size} x {cfg.grad_accum}"
                f"{f' x {world}' * (world > 1)}")
        per_phase = f" per phase ({', then '.join(phases)})" if len(phases) > 1 else ""
        raise InputError(f"recover.tokens={cfg.tokens} is less than one optimizer step{per_phase}"
                         f" ({step} tokens): set recover.tokens >= {need}")
