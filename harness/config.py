"""Typed configs: the schema Hydra composes into, and the check that runs before any model loads.

Every config group (`model`, `data`, `prune`, `recover`, `eval`, `logger`) is backed by a
dataclass, so a misspelt key or a value of the wrong type fails at composition time. Semantic
checks, and the checks of every input the run touches (model headers, texts, directories), run
in `validate`, which reads headers and a little text but loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, OmegaConf

from harness.data.config import DataConfig
from harness.data.text import check_source
from harness.distributed import launch_time
from harness.evaluation.config import SpeedConfig, ZeroShotConfig
from harness.hydra_errors import close_matches
from harness.keys import Keyed
from harness.models.loader import ModelConfig
from harness.pruning.depth import DepthPruneConfig
from harness.pruning.width import WidthPruneConfig
from harness.recovery.config import RecoverConfig
from harness.tracking.wandb_logger import LoggerConfig
from harness.validation import InputError, check_inputs


@dataclass
class EvalConfig(Keyed):
    """What to measure on the final model. Perplexity follows PROTOCOL.md on each source."""

    DETERMINING = ("ppl_sources", "seq_len", "zeroshot", "speed")
    NOT_DETERMINING = ("batch_size",)

    ppl_sources: list[str] = field(default_factory=lambda: ["wiki_test", "c4_test"])
    seq_len: int = 128
    batch_size: int = 8
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def validate(self) -> None:
        for source in self.ppl_sources:
            check_source(source, role="evaluation")
        if self.seq_len < 2 or self.batch_size < 1:
            raise ValueError("eval.seq_len must be >= 2 and eval.batch_size >= 1")
        if self.zeroshot.enabled:
            self.zeroshot.validate()
        if self.speed.enabled:
            self.speed.validate()


@dataclass
class NoPrune(Keyed):
    DETERMINING = ("name",)

    name: str = "none"

    def validate(self, hf_config) -> None:  # noqa: ARG002 - same signature as the others
        pass


@dataclass
class Config(Keyed):
    """The whole run. Its determining parts make the run key (harness.pipeline.run_identity)."""

    DETERMINING = ("model", "data", "prune", "recover", "eval")
    NOT_DETERMINING = ("logger", "experiment", "results_dir", "cache_dir", "seed")

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prune: Any = MISSING  # one of PRUNE_SCHEMAS, picked by the `prune` group
    recover: RecoverConfig = field(default_factory=RecoverConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment: str = "default"  # name of the experiment delta, for grouping
    results_dir: str = "results"
    cache_dir: str | None = None  # stage cache; None = <HARNESS_CACHE>/stages
    seed: int = 0  # unused by any stage (they have their own seeds); kept for old overrides


PRUNE_SCHEMAS = {"none": NoPrune, "depth": DepthPruneConfig, "width": WidthPruneConfig}
# `${launch_time:FORMAT}` names run dirs (conf/config.yaml). Registered on import, so submitit
# jobs that unpickle the app have it too; cached, so a job reuses the submitter's value.
OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)


def register_configs() -> None:
    """Put the schemas where the YAML files under conf/ extend them (`<name>_schema`)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, schema in PRUNE_SCHEMAS.items():
        cs.store(group="prune", name=f"{name}_schema", node=schema)


@dataclass
class RunSpec:
    """A validated run: typed config objects, ready for the pipeline."""

    model: ModelConfig
    data: DataConfig
    prune: NoPrune | DepthPruneConfig | WidthPruneConfig
    recover: RecoverConfig
    eval: EvalConfig
    logger: LoggerConfig
    raw: DictConfig
    dense_params: int = 0  # parameters of the starting model, from its config and headers


def apply_size_overrides(cfg: DictConfig, overrides) -> DictConfig:
    """A pruning size given as an override (command line or sweep) replaces the size the config
    files set (the group default `ratio: 0.2`, or an experiment's), so `prune=depth
    prune.num_blocks=8` needs no `prune.ratio=null`. Two sizes given as overrides stay an error:
    validation names both. `overrides` are Hydra's task overrides of this run."""
    sizes = getattr(PRUNE_SCHEMAS.get(cfg.prune.name), "SIZE_FIELDS", ())
    keys = {f"prune.{name}": name for name in sizes}
    given = {keys[o.key_or_group] for o in OverridesParser.create().parse_overrides(list(overrides))
             if o.key_or_group in keys and not o.is_delete() and o.value() is not None}
    if len(given) == 1:
        for name in sizes:
            if name not in given:
                cfg.prune[name] = None
    return cfg


def unknown_keys(obj, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(key, the keys its schema has) for every key a `+group.key=...` override added to a typed
    config that its schema lacks."""
    if not is_dataclass(obj):
        return []
    known = [f.name for f in fields(obj)]
    out = [(f"{prefix}{k}", known) for k in vars(obj) if k not in known]
    for name in known:
        out += unknown_keys(getattr(obj, name), f"{prefix}{name}.")
    return out


def validate(cfg: DictConfig) -> RunSpec:
    """Turn the composed config into typed objects and check every value, then every input the
    run will touch (harness.validation); raise ValueError with one line for the first problem."""
    known = [f.name for f in fields(Config)]
    for key in cfg:
        if key not in known:
            raise InputError(f"unknown key {key}: {close_matches(str(key), known)}")
    obj = OmegaConf.to_object(cfg)
    for key, known in unknown_keys(obj):  # `+recover.x=...` adds a key the schema lacks
        raise InputError(f"unknown key {key}: {close_matches(key.rsplit('.', 1)[-1], known)}")
    spec = RunSpec(obj.model, obj.data, obj.prune, obj.recover, obj.eval, obj.logger, raw=cfg)
    spec.model.validate()
    spec.data.validate()
    spec.eval.validate()
    spec.logger.validate()
    spec.recover.validate()
    if spec.model.shape_only and spec.recover.name != "none":
        raise ValueError(f"{spec.model.name} has random weights: recovery on it is meaningless")
    spec.dense_params = check_inputs(spec)
    return spec
