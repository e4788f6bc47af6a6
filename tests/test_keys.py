"""Run keys and stage cache keys come from the fields each config declares as determining.

Every field of every config is declared determining or not (a new field that is neither fails
here). Changing any non-determining field leaves the run key and every stage key as they were;
changing any determining field changes the run key and at least one stage key. Results rows hold
the run's identity, so a row's run key can be recomputed after a schema change (rekey).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

import pandas as pd
import pytest

from harness.assets import EMBEDDED_SHA256
from harness.config import PRUNE_SCHEMAS, Config, EvalConfig, NoPrune, RunSpec
from harness.data.config import DataConfig
from harness.evaluation.config import SpeedConfig, ZeroShotConfig
from harness.keys import Keyed, undeclared
from harness.models.loader import ModelConfig, load_hf_config
from harness.pipeline import Run, run_key
from harness.pruning.depth import DepthPruneConfig
from harness.pruning.width import WidthPruneConfig
from harness.recovery.config import METHODS, RecoverConfig
from harness.sweeps.cache import StageCache, config_key
from harness.tracking.wandb_logger import LoggerConfig


def _schemas(cls=Config, seen=None) -> set:
    """Every config dataclass reachable from the top-level Config, plus every prune schema."""
    seen = set() if seen is None else seen
    import typing

    seen.add(cls)
    for f in fields(cls):
        kind = typing.get_type_hints(cls).get(f.name)
        if is_dataclass(kind) and kind not in seen:
            _schemas(kind, seen)
    for schema in PRUNE_SCHEMAS.values():
        if schema not in seen:
            _schemas(schema, seen)
    return seen


def test_every_field_of_every_config_is_declared_determining_or_not():
    schemas = _schemas()
    assert {ModelConfig, DataConfig, DepthPruneConfig, WidthPruneConfig, RecoverConfig,
            EvalConfig, ZeroShotConfig, SpeedConfig, LoggerConfig} <= schemas
    for cls in schemas:
        assert issubclass(cls, Keyed), f"{cls.__name__} does not declare its fields (Keyed)"
        assert undeclared(cls) == [], f"{cls.__name__}: classify {undeclared(cls)}"


# ---- changing fields -----------------------------------------------------------------------
def _other(name: str, value):
    """A different value of the same kind (keys never validate values)."""
    if name == "dtype":
        return "bfloat16"
    if name == "unit":  # read when sizing the importance key
        return "attn" if value != "attn" else "mlp"
    if name == "criterion":  # looked up in the criteria registry: must exist (depth and width)
        return "taylor" if value != "taylor" else "random"
    if name == "bf16":
        return "true" if value != "true" else "false"
    if name == "device":  # where it runs; the dtype it runs in is keyed (fixed in _variants)
        return "cpu" if value != "cpu" else "meta"
    if name == "name" and value in EMBEDDED_SHA256:  # an embedded model: keyed by its wheel
        return next(m for m in EMBEDDED_SHA256 if m != value)
    if name == "path" and value is None:
        return "org/some-hub-model"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.001
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list):
        return [*value, max(value) + 1 if value and isinstance(value[0], int) else "extra"]
    return 3 if value is None else pytest.fail(f"no other value for {name}={value!r}")


def _variants(tiny_dir) -> list[RunSpec]:
    """Specs covering every stage kind, so each declared field is determining in one of them."""
    model = ModelConfig(path=str(tiny_dir), dtype="float32")  # `auto` would follow the device
    evals = EvalConfig(ppl_sources=["wiki_test"], zeroshot=ZeroShotConfig(enabled=True),
                       speed=SpeedConfig(enabled=True))

    def spec(prune, recover=None, model=model, evaluation=evals):
        return RunSpec(model, DataConfig(), prune, recover or RecoverConfig(), evaluation,
                       LoggerConfig(), raw=None)

    depth = DepthPruneConfig(ratio=0.2, protect_first=1, protect_last=1)
    return [
        spec(NoPrune(), model=ModelConfig(dtype="float32"), evaluation=EvalConfig()),  # embedded, plain eval
        spec(NoPrune()),
        spec(depth),
        spec(replace(depth, criterion="random")),
        spec(WidthPruneConfig(ratio=0.2, criterion="flap", layer_start=0, layer_end=4)),
        spec(WidthPruneConfig(unit_ratio=0.2, criterion="random", layer_start=0, layer_end=4)),
        spec(WidthPruneConfig(unit_ratio=0.2, attn_unit="kv_group", layer_start=0, layer_end=4)),
        *[spec(depth, RecoverConfig(name=m, tokens=4096, bf16="false")) for m in METHODS if m != "none"],
    ]


def _keys(spec: RunSpec, tmp_path, hf_config) -> tuple[str, dict]:
    """(run key, {stage: cache key}) of a spec, without loading any weights."""
    run = Run(spec, tmp_path / "run", StageCache(tmp_path / "cache"))
    stages = {"pruned": run.pruned_key, "recovered": run.final_key,
              "importance": run.importance_key(hf_config), **run.eval_keys()}
    return run_key(spec), {k: config_key(v) for k, v in stages.items() if v is not None}


def _edits(spec: RunSpec):
    """(label, changed spec, determining?) for every field of every stage config of `spec`,
    nested configs (eval.zeroshot, eval.speed) included."""
    def walk(obj, label, rebuild):
        effective = obj.key_fields()
        if label == "data" and spec.prune.name == "none":
            effective = {}  # calibration data only matters when something is pruned
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, Keyed):
                if f.name in effective:  # e.g. zeroshot enabled: its own fields matter
                    yield from walk(value, f"{label}.{f.name}",
                                    lambda v, n=f.name: rebuild(replace(obj, **{n: v})))
                continue
            changed = rebuild(replace(obj, **{f.name: _other(f.name, value)}))
            yield f"{label}.{f.name}", changed, f.name in effective

    for stage in ("model", "data", "prune", "recover", "eval"):
        yield from walk(getattr(spec, stage), stage, lambda v, s=stage: replace(spec, **{s: v}))


def test_keys_change_with_every_determining_field_and_no_other(tiny_dir, tmp_path):
    hf_config = load_hf_config(ModelConfig(path=str(tiny_dir)))
    determining_somewhere = set()
    for spec in _variants(tiny_dir):
        base_run, base_stages = _keys(spec, tmp_path, hf_config)
        for label, changed, determining in _edits(spec):
            run, stages = _keys(changed, tmp_path, hf_config)
            if determining:
                determining_somewhere.add((type(_owner(spec, label)).__name__, label.split(".")[-1]))
                assert run != base_run, f"{label} determines results but not the run key"
                assert stages != base_stages, f"{label} determines results but no stage key"
            else:
                assert run == base_run, f"{label} does not determine results but is in the run key"
                assert stages == base_stages, f"{label} changed a stage key: " + str(
                    [k for k in stages if stages[k] != base_stages.get(k)])
    for cls in _schemas() - {Config}:
        for name in cls.DETERMINING:
            assert is_dataclass(_field_type(cls, name)) or (cls.__name__, name) in \
                determining_somewhere, f"{cls.__name__}.{name}: no variant here exercises it"


def _field_type(cls, name):
    import typing

    return typing.get_type_hints(cls)[name]


def _owner(spec: RunSpec, label: str):
    obj = spec
    for part in label.split(".")[:-1]:
        obj = getattr(obj, part)
    return obj


def test_what_the_issue_named_does_not_retrain_or_add_rows(tiny_dir, tmp_path):
    """Progress bars, checkpoint and logging cadence, another method's settings and evaluation
    batch sizes neither retrain (recovery cache key) nor make a new results row (run key)."""
    hf_config = load_hf_config(ModelConfig(path=str(tiny_dir)))
    spec = _variants(tiny_dir)[-1]
    lora = [s for s in _variants(tiny_dir) if s.recover.name == "lora"][0]
    base = _keys(lora, tmp_path, hf_config)
    same = replace(lora, recover=replace(lora.recover, disable_tqdm=True, save_steps=7,
                                         logging_steps=3, gradient_checkpointing=True, lr=0.5,
                                         kd_alpha=0.2, cpt_fraction=0.9),
                   eval=replace(lora.eval, batch_size=1,
                                zeroshot=replace(lora.eval.zeroshot, batch_size=2)))
    assert _keys(same, tmp_path, hf_config) == base
    assert spec.recover.name == "kd" and "lora_r" not in spec.recover.key_fields()


# ---- results rows and rekey --------------------------------------------------------------
def _row(spec: RunSpec, tmp_path, experiment="e", **metrics) -> dict:
    from harness.pipeline import run_identity
    from harness.tracking.rows import result_row

    identity = run_identity(spec)
    raw = {"experiment": experiment}
    return result_row(replace(spec, raw=raw), identity, config_key(identity), metrics, tmp_path)


def test_a_row_holds_every_determining_field_and_rebuilds_its_key(tiny_dir, tmp_path):
    from harness.tracking.rows import rekey_table

    specs = _variants(tiny_dir)
    rows = [_row(s, tmp_path, experiment=f"e{i}") for i, s in enumerate(specs)]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    table = pd.read_csv(tmp_path / "t.csv")  # through CSV: lists as text, ints as floats
    assert table["run_key"].tolist() == [run_key(s) for s in specs]
    lora = rows[[s.recover.name for s in specs].index("lora")]
    assert lora["recover.lora_r"] == 8 and lora["data.calib_seed"] == 1234
    assert lora["eval.zeroshot.limit"] is None and lora["eval.speed.batch_sizes"] == "[1, 16, 64, 128]"
    rekeyed, counts = rekey_table(table.assign(run_key="stale"))
    assert rekeyed["run_key"].tolist() == table["run_key"].tolist()
    assert counts == {"rows": len(specs), "changed": len(specs), "merged": 0}


def test_rekey_migrates_old_rows_and_merges_those_that_now_share_a_key(tiny_dir, tmp_path):
    """Rows written before rows held their identity (and keyed on disable_tqdm) get the key a
    fresh run of theirs gets; two that differed only in a progress bar become one row."""
    from harness.tracking.rows import IDENTITY_PREFIXES, rekey_table

    spec = [s for s in _variants(tiny_dir) if s.recover.name == "lora"][0]
    spec = replace(spec, eval=EvalConfig(ppl_sources=["wiki_test", "c4_test"]))
    new = _row(spec, tmp_path, **{"ppl/wiki_test": 30.0, "ppl/c4_test": 40.0})
    old = {k: v for k, v in new.items() if not k.startswith(IDENTITY_PREFIXES)}
    old.update({"model": str(tiny_dir), "prune.name": "depth", "prune.criterion": "ppl",
                "prune.ratio": 0.2, "prune.protect_first": 1, "prune.protect_last": 1,
                "recover.name": "lora", "recover.tokens": 4096.0, "eval.seq_len": 128.0})
    rows = [{**old, "run_key": "a", "experiment": "x", "recover.disable_tqdm": False,
             "finished": "2026-01-01 00:00:00"},
            {**old, "run_key": "b", "experiment": "y", "recover.disable_tqdm": True,
             "finished": "2026-01-02 00:00:00", "ppl/wiki_test": 31.0}]
    rekeyed, counts = rekey_table(pd.DataFrame(rows))
    assert counts == {"rows": 2, "changed": 2, "merged": 1}
    (row,) = rekeyed.to_dict("records")
    assert row["run_key"] == run_key(spec) and row["experiment"] == "x,y"
    assert row["ppl/wiki_test"] == 31.0 and "recover.disable_tqdm" not in row  # newest kept
