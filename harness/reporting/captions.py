"""Table captions: protocol, metric convention, zero-shot limit, speed setup, recovery budget,
and the exact commands that regenerate the table's rows.

The commands are rebuilt from what the rows record (ratios, `recover.tokens`, `zeroshot/limit`,
the speed grid), so a table made from a narrowed sweep names the narrowed command.
"""

from __future__ import annotations

import pandas as pd


def first(part: pd.DataFrame, col: str, default=None):
    """The first value the rows record in `col` (`default` when the column is absent or empty)."""
    values = part[col].dropna() if col in part else ()
    return values.iloc[0] if len(values) else default


def caption(part: pd.DataFrame, experiment: str) -> str:
    """Protocol, metric convention and limit, and the command that regenerates the table."""
    seq = part["eval.seq_len"].dropna().unique().tolist() if "eval.seq_len" in part else [128]
    bits = [f"{part['model'].iloc[0]}, offline protocol v1 (PROTOCOL.md), PPL at seq_len "
            f"{', '.join(str(int(s)) for s in seq)}, fp32"]
    conv = first(part, "zeroshot/convention")
    if conv is not None:
        limit = first(part, "zeroshot/limit")
        limit = "none" if limit is None else f"{limit:g}"
        bits.append(f"zero-shot accuracy (%) under the {conv} convention, mean of the seven "
                    f"tasks, limit {limit} docs per task")
    if "model/shape_only" in part and part["model/shape_only"].astype(bool).any():
        bits.append("shape-only model: random weights, speed and memory only")
    speed = speed_note(part)
    if speed:
        bits.append(speed)
    from harness.reporting.differ import differing, recovery_note, short

    recovery = recovery_note(part)
    if recovery:
        bits.append(recovery)
    differ = differing(part)
    if differ:
        bits.append(f"rows differ in {', '.join(short(c) for c in differ)} (columns)")
    from harness.reporting.seeds import seeds_note

    seeds = seeds_note(part)
    if seeds:
        bits.append(seeds)
    commands = ", ".join(f"`{c}`" for c in regenerate_commands(part, experiment))
    bits.append(f"regenerate: {commands} then `harness report --write`")
    return "; ".join(bits) + "."


def speed_note(part: pd.DataFrame) -> str | None:
    """Where and how the decode columns were measured (device, prompt, repeats)."""
    backends = [c.split("/")[1] for c in part.columns if c.endswith("/bs1/out128/decode_ms")]
    if not backends:
        return None

    device = first(part, "speed/device", "unrecorded device")
    prompt, warm, reps = (int(float(first(part, f"eval.speed.{k}", d)))
                          for k, d in (("prompt_len", 128), ("warmup", 2), ("repeats", 5)))
    return (f"decode ms per generated token at batch 1, {'/'.join(backends)} backend, on "
            f"{device}, after a {prompt}-token prompt, median of {reps} runs after {warm} "
            "warm-up")


def recovery_budget(part: pd.DataFrame) -> int | None:
    """The one `recover.tokens` shared by the experiment's recovered runs (None if none/mixed)."""
    if "recover.name" not in part or "recover.tokens" not in part:
        return None
    tokens = part.loc[part["recover.name"].fillna("none") != "none", "recover.tokens"].dropna()
    return int(tokens.iloc[0]) if tokens.nunique() == 1 else None


def eval_overrides(part: pd.DataFrame) -> list[str]:
    """The evaluation settings the rows record (zero-shot limit; a speed grid that differs from
    the defaults) as command-line overrides."""
    from dataclasses import asdict

    from harness.evaluation.config import SpeedConfig

    out = []
    limit = first(part, "zeroshot/limit")
    if limit is not None:
        out.append(f"eval.zeroshot.limit={int(limit)}")
    for name, default in asdict(SpeedConfig()).items():
        col = f"eval.speed.{name}"
        value = first(part, col)
        if name == "enabled" or value is None:
            continue
        if isinstance(default, list):
            text = str(value).replace(" ", "")
            if text != str(default).replace(" ", ""):
                out.append(f"'{col}={text}'")
        elif isinstance(default, int) and not isinstance(default, bool):
            if int(float(value)) != default:
                out.append(f"{col}={int(float(value))}")
    return out


def sweep_has_dense(experiment: str) -> bool:
    """Whether the experiment's own sweep runs the dense model (a `dense` variant)."""
    from omegaconf import OmegaConf

    from harness import CONF_DIR

    path = CONF_DIR / "experiment" / f"{experiment}.yaml"
    if not path.exists():
        return False
    params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params", default=None) or {}
    return "dense" in str(params.get("+variant", "")).split(",")


def regenerate_commands(part: pd.DataFrame, experiment: str) -> list[str]:
    """`harness experiment=X` plus the ratios, budget and evaluation settings its rows were run
    with, so a table made from a narrowed sweep (e.g. two ratios at a CPU-sized budget) names the
    narrowed command; a dense row that the sweep itself does not make gets a command of its own."""
    name = part.get("prune.name", pd.Series("none", index=part.index)).fillna("none")
    if experiment == "default":  # runs made without an experiment delta
        plain = (name == "none").all() and (part.get(
            "recover.name", pd.Series("none", index=part.index)).fillna("none") == "none").all()
        return ["harness" if plain else "harness <the overrides in each run's config.yaml>"]
    pruned, evals = part[name != "none"], eval_overrides(part)
    own_dense = sweep_has_dense(experiment)
    cmd = [f"harness experiment={experiment}"]
    sized = "prune.ratio" in pruned and pruned["prune.ratio"].notna().all()  # not unit_ratio
    if not own_dense and len(pruned) and sized:
        ratios = ",".join(f"{r:g}" for r in sorted(pruned["prune.ratio"].unique()))
        cmd.append(f"'prune.ratio={ratios}'" if "," in ratios else f"prune.ratio={ratios}")
    budget = recovery_budget(part)
    if budget is not None:
        cmd.append(f"recover.tokens={budget}")
    commands = [" ".join(cmd + evals)]
    if (name == "none").any() and len(pruned) and not own_dense:
        dense = [f"harness experiment={experiment}", "prune=none recover=none hydra.mode=RUN"]
        commands.append(" ".join(dense + evals))
    return commands
