"""Run keys and stage cache keys are complete and exact, for every registered entry.

Every field of every config class (the registries' too) is declared determining or not. For a
spec exercising each pruning method, depth and width criterion, recovery method and evaluation,
changing any field changes exactly the keys of the stages that field determines and of the
stages built from them, and the run key exactly when some stage key changes; a field declared
not determining changes nothing. The expected stages come from the declarations (a criterion's
`key_fields`, a method's config class, an evaluation's `keys`); the keys come from
harness/identity.py. Results rows hold the run's identity, so a row's run key can be recomputed
after a schema change (rekey).
"""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass, replace

import pandas as pd
import pytest

from harness.assets import EMBEDDED_SHA256
from harness.config import Config, RunSpec
from harness.data.config import DataConfig
from harness.evaluation.config import EvalConfig, SpeedConfig, ZeroShotConfig
from harness.evaluation.registry import EVALUATIONS
from harness.identity import recover_identity, run_identity, run_key, stage_keys
from harness.keys import Keyed, config_key, undeclared
from harness.models.loader import ModelConfig, load_hf_config
from harness.pruning.depth import DepthPruneConfig
from harness.pruning.hybrid import HybridPruneConfig
from harness.pruning.importance.registry import (
    DEPTH_CRITERIA,
    WIDTH_CRITERIA,
    WidthCriterion,
    register_width,
)
from harness.pruning.methods import PRUNE_METHODS, NoPrune
from harness.pruning.width import WidthPruneConfig
from harness.recovery.registry import METHODS, settings
from harness.tracking.wandb_logger import LoggerConfig

ORDER = ("importance", "pruned", "recovered")  # then the evaluations, built from the last


@pytest.fixture(scope="module", autouse=True)
def toy_width_criterion():
    """A criterion declaring `seed` as its own key field (the issue's example): its seed must
    change its scores' key and the pruned model's, as random's does."""
    register_width(WidthCriterion("toy_seeded", lambda ctx: None, key_fields=("seed",)))
    yield
    WIDTH_CRITERIA._entries.pop("toy_seeded")


def _classes() -> set:
    """Every config dataclass of a run: Config's fields, every pruning method's and recovery
    method's config class, and the nested ones."""
    seen = set()

    def walk(cls):
        seen.add(cls)
        for f in fields(cls):
            kind = typing.get_type_hints(cls).get(f.name)
            if is_dataclass(kind) and kind not in seen:
                walk(kind)

    for cls in [Config, *(m.config for m in PRUNE_METHODS), *(m.config for m in METHODS)]:
        walk(cls)
    return seen


def test_every_field_of_every_config_is_declared_determining_or_not():
    classes = _classes()
    assert {ModelConfig, DataConfig, DepthPruneConfig, WidthPruneConfig, EvalConfig,
            ZeroShotConfig, SpeedConfig, LoggerConfig} <= classes
    assert {m.config for m in METHODS} <= classes and len({m.config for m in METHODS}) == 5
    for cls in classes:
        assert issubclass(cls, Keyed), f"{cls.__name__} does not declare its fields (Keyed)"
        assert undeclared(cls) == [], f"{cls.__name__}: classify {undeclared(cls)}"


# ---- the specs: one per registered entry ---------------------------------------------------
def _specs(tiny_dir) -> list[tuple[str, RunSpec]]:
    model = ModelConfig(path=str(tiny_dir), dtype="float32")  # `auto` would follow the device
    hf = load_hf_config(model)
    evals = EvalConfig(ppl_sources=["wiki_test", "c4_test"], engine="llamacpp",
                       zeroshot=ZeroShotConfig(enabled=True), speed=SpeedConfig(enabled=True))

    def spec(prune, recover=None, model=model, evaluation=evals):
        return RunSpec(model, DataConfig(), prune, recover or settings(), evaluation, hf_config=hf)

    depth = DepthPruneConfig(ratio=0.2, protect_first=1, protect_last=1)
    out = [("dense, embedded model", spec(NoPrune(), model=ModelConfig(dtype="float32"),
                                          evaluation=EvalConfig())),
           ("dense", spec(NoPrune()))]
    out += [(f"depth {c.name}", spec(replace(depth, criterion=c.name))) for c in DEPTH_CRITERIA]
    out.append(("depth ppl attn", spec(replace(depth, unit="attn"))))
    for c in WIDTH_CRITERIA:
        width = WidthPruneConfig(ratio=0.2, criterion=c.name, layer_start=0, layer_end=4,
                                 scope="global" if c.joint_selection else "uniform")
        out.append((f"width {c.name}", spec(width)))
    out.append(("width taylor kv_group", spec(WidthPruneConfig(
        unit_ratio=0.2, attn_unit="kv_group", layer_start=0, layer_end=4))))
    out.append(("width loss, mlp random", spec(WidthPruneConfig(
        ratio=0.2, criterion="loss", mlp_criterion="random", layer_start=0, layer_end=4))))
    hybrid = HybridPruneConfig(ratio=0.4, protect_first=1, protect_last=1, layer_start=0,
                               layer_end=-1)
    out.append(("hybrid ppl+taylor", spec(hybrid)))
    out.append(("hybrid random+flap", spec(replace(hybrid, depth_criterion="random",
                                                   width_criterion="flap", scope="global"))))
    out += [(f"recover {m.name}", spec(depth, settings(m.name, tokens=4096, bf16="false")))
            for m in METHODS if m.phases]
    # fields that matter only in some settings: wsd's decay, the held-out curve's text
    out += [(f"recover {m.name} wsd curve", spec(depth, settings(
        m.name, tokens=4096, bf16="false", schedule="wsd", eval_every=1024)))
        for m in METHODS if m.phases]
    return out


def _configs(spec: RunSpec):
    return {"model": spec.model, "data": spec.data, "prune": spec.prune,
            "recover": spec.recover, "eval": spec.eval}


def _other(name: str, value):
    """A different value of the same kind (keys never validate values)."""
    special = {"dtype": "bfloat16", "bf16": "true" if value != "true" else "false",
               "device": "cpu" if value != "cpu" else "meta",
               "unit": "attn" if value != "attn" else "mlp",
               "depth_unit": "attn" if value != "attn" else "mlp",
               "depth_criterion": "taylor" if value != "taylor" else "ppl",
               "width_criterion": "taylor" if value != "taylor" else "random",
               "attn_unit": "kv_group" if value != "kv_group" else "q_head",
               "gqa_fold": "llm_pruner" if value != "llm_pruner" else "aligned",
               "criterion": "taylor" if value != "taylor" else "random",
               "mlp_criterion": "l1" if value != "l1" else "l2",
               "order": "width_first" if value != "width_first" else "depth_first"}
    if name in special:
        return special[name]
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
        return [*value, max(value) + 1 if value and isinstance(value[0], int) else "c4_calib"]
    return 3 if value is None else pytest.fail(f"no other value for {name}={value!r}")


def _edits(spec: RunSpec):
    """(label, changed spec) for every field of every config of `spec`, nested ones too.
    Fields that pick the entry itself (a method's or criterion's name) are left to the specs."""
    def walk(obj, label, rebuild):
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                yield from walk(value, f"{label}.{f.name}",
                                lambda v, n=f.name: rebuild(replace(obj, **{n: v})))
            elif not (label in ("prune", "recover") and f.name == "name"):
                yield f"{label}.{f.name}", rebuild(replace(obj, **{f.name: _other(f.name, value)}))

    for stage, obj in _configs(spec).items():
        yield from walk(obj, stage, lambda v, s=stage: replace(spec, **{s: v}))


# ---- what the declarations say each stage depends on ---------------------------------------
def _own(spec: RunSpec) -> dict[str, object]:
    """{node: what it alone declares}: the model and calibration at the root, then each stage's
    own determining fields, read off the configs and registry entries."""
    out = {"model": spec.model.key_fields() | {"dtype": spec.model.dtype},
           "calibration": spec.data.key_fields()}
    if spec.prune.name != "none":
        out["importance"] = spec.prune.importance_fields(spec.hf_config)
        out["pruned"] = spec.prune.key_fields()
    if spec.recover.name != "none":
        out["recovered"] = recover_identity(spec.recover)
    for e in EVALUATIONS:
        if not (e.real_weights and spec.model.shape_only):
            out.update({f"eval:{label}": own for label, own in e.keys(spec).items()})
    return out


def _parents(stage: str, spec: RunSpec) -> list[str]:
    if stage == "importance":
        return ["model", "calibration"]
    if stage == "pruned":
        return ["importance"] if _own(spec)["importance"] is not None else ["model", "calibration"]
    if stage == "recovered":
        return ["pruned" if spec.prune.name != "none" else "model"]
    last = [s for s in ORDER if s in _own(spec) and (s != "importance")]
    return [last[-1] if last else "model"]


def _expected(spec: RunSpec, changed: RunSpec) -> set[str]:
    """Stages whose own declarations changed, and every stage built from one of them."""
    before, after = _own(spec), _own(changed)
    dirty = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    stages = [s for s in before if s not in ("model", "calibration")]
    for stage in stages:  # in order: a stage is dirty if something it starts from is
        if any(p in dirty for p in _parents(stage, spec)):
            dirty.add(stage)
    return {s.removeprefix("eval:") for s in dirty if s not in ("model", "calibration")}


def _stage_keys(spec: RunSpec) -> dict[str, str]:
    return {k: config_key(v) for k, v in stage_keys(spec).items()}


def test_each_field_changes_exactly_the_keys_it_determines(tiny_dir):
    exercised = set()  # (class, field) that changed some key in some spec
    for name, spec in _specs(tiny_dir):
        keys, run = _stage_keys(spec), run_key(spec)
        assert set(keys) >= {"efficiency"} and (spec.prune.name == "none") != ("pruned" in keys)
        for label, changed in _edits(spec):
            new = _stage_keys(changed)
            actual = {s for s in keys.keys() | new.keys() if keys.get(s) != new.get(s)}
            want = _expected(spec, changed)
            assert actual == want, f"{name}: {label} changed {sorted(actual)}, declared {sorted(want)}"
            assert (run_key(changed) != run) == bool(actual), f"{name}: {label} and the run key"
            if actual:
                owner, field = label.rsplit(".", 1)
                obj = spec
                for part in owner.split("."):
                    obj = getattr(obj, part)
                exercised.add((type(obj), field))
    for cls in _classes() - {Config, LoggerConfig}:
        for field in cls.determining():
            if not is_dataclass(typing.get_type_hints(cls)[field]) and field != "name":
                assert any(issubclass(c, cls) and f == field for c, f in exercised) or \
                    any(issubclass(cls, c) and f == field for c, f in exercised), \
                    f"{cls.__name__}.{field} is declared determining but changed no key"
    for cls in _classes():
        for field in cls.not_determining():
            assert (cls, field) not in exercised, f"{cls.__name__}.{field} changed a key"


def test_a_seeded_criterion_keys_its_seed_into_the_pruned_model(tiny_dir):
    """The issue's case: a width criterion with key_fields=("seed",) changes both keys."""
    (_, spec), = [s for s in _specs(tiny_dir) if s[0] == "width toy_seeded"]
    other = replace(spec, prune=replace(spec.prune, seed=7))
    a, b = _stage_keys(spec), _stage_keys(other)
    assert a["importance"] != b["importance"] and a["pruned"] != b["pruned"]
    taylor = replace(spec, prune=replace(spec.prune, criterion="taylor"))
    assert _stage_keys(taylor) == _stage_keys(replace(taylor, prune=replace(taylor.prune, seed=7)))


def test_the_expectation_can_fail(tiny_dir):
    """Guard: a key that forgets what it starts from would be caught."""
    (_, spec), = [s for s in _specs(tiny_dir) if s[0] == "depth ppl"]
    changed = replace(spec, data=replace(spec.data, calib_seed=5))
    assert _expected(spec, changed) == {"importance", "pruned", "efficiency", "ppl/wiki_test",
                                        "ppl/c4_test", "zeroshot", "speed", "engine/speed",
                                        "engine/ppl/wiki_test", "engine/ppl/c4_test"}


def test_what_the_issue_named_does_not_retrain_or_add_rows(tiny_dir):
    """Progress bars, checkpoint and logging cadence, another method's settings and evaluation
    batch sizes neither retrain (recovery cache key) nor make a new results row (run key)."""
    lora = dict(_specs(tiny_dir))["recover lora"]
    same = replace(lora, recover=settings("lora", tokens=4096, bf16="false", disable_tqdm=True,
                                          save_steps=7, logging_steps=3, lr=0.5, kd_alpha=0.2,
                                          gradient_checkpointing=True, cpt_fraction=0.9),
                   eval=replace(lora.eval, batch_size=1,
                                zeroshot=replace(lora.eval.zeroshot, batch_size=2)))
    assert _stage_keys(same) == _stage_keys(lora) and run_key(same) == run_key(lora)
    assert "lora_r" not in dict(_specs(tiny_dir))["recover kd"].recover.key_fields()


def test_local_inputs_are_keyed_by_content_not_path(tiny_dir, tmp_path, text_file):
    """A moved copy keys the same; the same path rewritten keys differently."""
    import shutil

    (_, spec), = [s for s in _specs(tiny_dir) if s[0] == "depth ppl"]
    spec = replace(spec, data=replace(spec.data, calib_source=str(text_file)))
    copy_dir = shutil.copytree(tiny_dir, tmp_path / "elsewhere")
    copy_text = shutil.copy(text_file, tmp_path / "moved.txt")
    moved = replace(spec, model=replace(spec.model, path=str(copy_dir)),
                    data=replace(spec.data, calib_source=str(copy_text)))
    assert _stage_keys(moved) == _stage_keys(spec)
    text_file.write_text(text_file.read_text() + " more")
    assert _stage_keys(spec)["importance"] != _stage_keys(moved)["importance"]


# ---- results rows and rekey --------------------------------------------------------------
def _row(spec: RunSpec, tmp_path, experiment="e", **metrics) -> dict:
    from harness.reporting.rows import result_row

    identity = run_identity(spec)
    return result_row(replace(spec, experiment=experiment), identity, config_key(identity),
                      metrics, tmp_path)


def test_a_row_holds_every_determining_field_and_rebuilds_its_key(tiny_dir, tmp_path):
    from harness.reporting.rows import rekey_table

    specs = [s for n, s in _specs(tiny_dir) if "toy" not in n]
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
    from harness.reporting.rows import IDENTITY_PREFIXES, rekey_table

    spec = dict(_specs(tiny_dir))["recover lora"]
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
