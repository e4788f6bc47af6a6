"""Zero-shot accuracy of an in-memory model with lm-eval, the same way for every model.

`evaluate_zeroshot(model, tokenizer, cfg)` wraps the model as it is (dense, width- or
depth-pruned with uneven layers, LoRA/PEFT) in lm-eval's `HFLM` and runs `simple_evaluate` on
the offline tasks of `harness.evaluation.tasks` (or lm-eval's stock tasks with `source="hub"`).

Returned metrics, flat, accuracies in PERCENT (0-100, as the papers print them):

- `zeroshot/<task>`: the convention's metric (acc or acc_norm) for each of the seven tasks
- `zeroshot/<task>/acc`, `zeroshot/<task>/acc_norm` (where lm-eval computes it; BoolQ and
  WinoGrande have acc only), `zeroshot/<task>/acc_stderr`: raw values, so either convention
  can be recomputed later (`summarize`)
- `zeroshot/mean`: mean of the convention's metric over the seven tasks that were run;
  `zeroshot/mean/<convention>` for both conventions; `zeroshot/mean_tasks`: how many were averaged
- `zeroshot/lambada_openai` (= acc, percent) and `zeroshot/lambada_openai/ppl` (not in the mean)
- `zeroshot/convention`, `zeroshot/limit` (docs per task, None = all), `zeroshot/source`
"""

from __future__ import annotations

import logging

from harness.evaluation.config import CONVENTIONS, MEAN_TASKS, ZeroShotConfig
from harness.evaluation.registry import Evaluation, register
from harness.evaluation.tasks import lm_eval_name, task_manager
from harness.models.adapters import adapter_for

log = logging.getLogger(__name__)

__all__ = ["ZeroShotConfig", "evaluate_zeroshot", "run_lm_eval", "summarize"]


def _metric(entry: dict, name: str) -> float | None:
    """lm-eval stores metrics as '<name>,<filter>' ('acc,none'); None when absent."""
    for key, value in entry.items():
        if key.split(",")[0] == name and isinstance(value, int | float):
            return float(value)
    return None


def summarize(
    raw: dict[str, dict],
    convention: str = "shortened_llama",
    limit: int | None = None,
    source: str = "local",
) -> dict:
    """Flat metrics from lm-eval's per-task results keyed by canonical task name.

    `raw[task]` is lm-eval's `results["results"][<lm-eval task name>]` (keys like 'acc,none').
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose from {sorted(CONVENTIONS)}")
    out: dict = {"zeroshot/convention": convention, "zeroshot/limit": limit}
    out["zeroshot/source"] = source
    for task, entry in raw.items():
        for name, key in (("acc", "acc"), ("acc_norm", "acc_norm"), ("acc_stderr", "acc_stderr")):
            value = _metric(entry, name)
            if value is not None:
                out[f"zeroshot/{task}/{key}"] = 100.0 * value
        if task == "lambada_openai":
            out["zeroshot/lambada_openai"] = out.get("zeroshot/lambada_openai/acc")
            out["zeroshot/lambada_openai/ppl"] = _metric(entry, "perplexity")
    ran = [t for t in MEAN_TASKS if t in raw]
    for conv, metrics in CONVENTIONS.items():
        values = []
        for task in ran:
            value = out.get(f"zeroshot/{task}/{metrics[task]}")
            if value is None:
                raise KeyError(f"{task}: lm-eval returned no {metrics[task]!r} for {conv}")
            values.append(value)
            if conv == convention:
                out[f"zeroshot/{task}"] = value
        mean = sum(values) / len(values) if values else None
        out[f"zeroshot/mean/{conv}"] = mean
        if conv == convention:
            out["zeroshot/mean"] = mean
    out["zeroshot/mean_tasks"] = len(ran)
    return out


def run_lm_eval(model, tokenizer, cfg: ZeroShotConfig) -> dict[str, dict]:
    """lm-eval's raw per-task results for `cfg.tasks`, keyed by canonical task name."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    cfg.validate()
    names = {task: lm_eval_name(task, cfg.source) for task in cfg.tasks}
    was_training = model.training
    model.eval()
    try:
        # Families trained with a leading BOS (Gemma) get one before every request.
        bos = True if adapter_for(model).needs_bos else None
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size,
                  add_bos_token=bos)
        results = simple_evaluate(
            model=lm,
            tasks=list(names.values()),
            num_fewshot=0,
            limit=cfg.limit,
            task_manager=task_manager(cfg.source),
            bootstrap_iters=cfg.bootstrap_iters,
            log_samples=False,
            torch_random_seed=None,  # leave the caller's torch RNG alone
        )
    finally:
        model.train(was_training)
    per_task = results["results"]
    missing = [name for name in names.values() if name not in per_task]
    if missing:
        raise RuntimeError(f"lm-eval returned no results for {missing}")
    return {task: per_task[name] for task, name in names.items()}


def evaluate_zeroshot(model, tokenizer, cfg: ZeroShotConfig | None = None) -> dict:
    """Zero-shot accuracies (percent) of `model` as flat `zeroshot/...` metrics (module doc)."""
    cfg = (cfg or ZeroShotConfig()).validate()
    raw = run_lm_eval(model, tokenizer, cfg)
    metrics = summarize(raw, cfg.convention, cfg.limit, cfg.source)
    table = ", ".join(f"{t}={metrics[f'zeroshot/{t}']:.1f}" for t in cfg.tasks)
    log.info("zero-shot (%s, limit=%s): %s", cfg.convention, cfg.limit, table)
    return metrics


def _keys(spec) -> dict:
    zeroshot = spec.eval.zeroshot
    return {"zeroshot": {"zeroshot": zeroshot.key_fields()}} if zeroshot.enabled else {}


register(Evaluation(
    "zeroshot", keys=_keys,
    run=lambda ctx, label, fields: evaluate_zeroshot(ctx.model(), ctx.tokenizer(),
                                                     ctx.spec.eval.zeroshot),
    metrics=lambda label, fields, result: result))


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.evaluation.zeroshot [--model DIR] [--limit N] [--tasks ...]`: a table.

    Defaults to the embedded SmolLM2-135M (`harness.assets.smollm2_dir()`), fp32, offline data.
    """
    import argparse

    from harness.assets import smollm2_dir
    from harness.models.loader import ModelConfig, load_model

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", default=list(ZeroShotConfig().tasks))
    parser.add_argument("--convention", default="shortened_llama")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    path = args.model or smollm2_dir()
    cfg = ZeroShotConfig(True, args.tasks, args.convention, args.limit, args.batch_size).validate()
    model, tokenizer = load_model(ModelConfig(path=str(path), dtype="float32", device="cpu"))
    metrics = evaluate_zeroshot(model, tokenizer, cfg)
    print(f"| metric (%, {cfg.convention}, limit={cfg.limit}) | value |\n|---|---|")
    for key, value in metrics.items():
        print(f"| {key} | {value:.2f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
