"""Typed configs: the schema Hydra composes into, and the check that runs before any model loads.

Every config group (`model`, `data`, `prune`, `recover`, `eval`, `logger`) is backed by a
dataclass, so a misspelt key or a value of the wrong type fails at composition time. `prune`
has one schema per method (`<name>_schema`, from the pruning-method registry); `recover` has one
schema holding every registered recovery method's fields, narrowed after composition to the
chosen method's own config class. Semantic checks, and the checks of every input the run
touches (model headers, texts, directories), run in `validate`, which reads headers and a
little text but loads no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, OmegaConf

from harness import CONF_DIR
from harness.data.config import DataConfig
from harness.distributed import launch_time
from harness.evaluation.config import EvalConfig
from harness.export.config import ExportConfig
from harness.hydra_errors import close_matches
from harness.keys import Keyed
from harness.models.loader import ModelConfig
from harness.pruning.methods import PRUNE_METHODS
from harness.recovery import registry as recovery
from harness.recovery.config import RecoverConfig
from harness.tracking.wandb_logger import LoggerConfig
from harness.validation import InputError, check_inputs


@dataclass
class Config(Keyed):
    """The whole run. Its determining parts make the run key (harness.identity)."""

    DETERMINING = ("model", "data", "prune", "recover", "eval")
    NOT_DETERMINING = ("logger", "experiment", "results_dir", "cache_dir", "seed", "export")

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prune: Any = MISSING  # one of the pruning methods' schemas, picked by the `prune` group
    recover: Any = MISSING  # the recovery schema (every method's fields), see recovery.registry
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment: str = "default"  # name of the experiment delta, for grouping
    results_dir: str = "results"
    cache_dir: str | None = None  # stage cache; None = <HARNESS_CACHE>/stages
    seed: int = 0  # unused by any stage (they have their own seeds); kept for old overrides
    export: ExportConfig = field(default_factory=ExportConfig)  # engine files after the run


# `${launch_time:FORMAT}` names run dirs (conf/config.yaml). Registered on import, so submitit
# jobs that unpickle the app have it too; cached, so a job reuses the submitter's value.
OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)


def register_configs() -> None:
    """Put the schemas where the YAML files under conf/ extend them: `config_schema`,
    `prune/<method>_schema` for every pruning method, `recover/schema`."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for method in PRUNE_METHODS:
        cs.store(group="prune", name=f"{method.name}_schema", node=method.config)
    cs.store(group="recover", name="schema", node=recovery.schema())


@dataclass
class RunSpec:
    """A validated run: typed config objects, ready for the pipeline."""

    model: ModelConfig
    data: DataConfig
    prune: Any  # the pruning method's config (NoPrune, DepthPruneConfig, WidthPruneConfig, ...)
    recover: RecoverConfig  # the recovery method's own config class
    eval: EvalConfig
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment: str = "default"
    results_dir: str = "results"
    cache_dir: str | None = None
    hf_config: Any = None  # the starting model's transformers config (from its headers)
    dense_params: int = 0  # parameters of the starting model, from its config and headers
    raw: DictConfig | None = None  # the composed config, as written to config.yaml


def apply_size_overrides(cfg: DictConfig, overrides) -> DictConfig:
    """A pruning size given as an override (command line or sweep) replaces the size the config
    files set (the group default `ratio: 0.2`, or an experiment's), so `prune=depth
    prune.num_blocks=8` needs no `prune.ratio=null`. Two sizes given as overrides stay an error:
    validation names both. `overrides` are Hydra's task overrides of this run."""
    schema = PRUNE_METHODS.get(cfg.prune.name).config if cfg.prune.name in PRUNE_METHODS else None
    sizes = getattr(schema, "SIZE_FIELDS", ())
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


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_name(name: str, key: str) -> None:
    """A name that becomes part of file names (experiment): no path separators, no `..`."""
    if not NAME.match(str(name)) or ".." in str(name):
        raise InputError(f"{key}={name!r} is not a plain name: use letters, digits and _ . + - "
                         "(it names report files)")


def check_experiment(choices) -> None:
    """`experiment` is an optional group, so Hydra silently skips a misspelt one."""
    name = choices.get("experiment")
    options = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    if name and name not in options:
        raise InputError(f"experiment={name} is not an experiment: {close_matches(name, options)}")


def check_job(cfg: DictConfig, choices, overrides, where: str | None = None) -> RunSpec:
    """The validated spec of one composed job (Hydra's group choices and task overrides as
    well); `where` names a sweep cell in the error line."""
    try:
        check_experiment(choices)
        return validate(apply_size_overrides(cfg, overrides))
    except ValueError as e:
        if where is None:
            raise
        raise InputError(f"{where}: {e}") from None


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
    method = PRUNE_METHODS.get(obj.prune.name)
    if not isinstance(obj.prune, method.config):
        raise InputError(f"prune.name={obj.prune.name} contradicts the prune group's schema "
                         f"({type(obj.prune).__name__}): choose the method with prune="
                         f"{obj.prune.name}")
    check_name(obj.experiment, "experiment")
    spec = RunSpec(obj.model, obj.data, obj.prune, recovery.narrow(obj.recover), obj.eval,
                   obj.logger, experiment=obj.experiment,
                   results_dir=obj.results_dir, cache_dir=obj.cache_dir, raw=cfg)
    spec.model.validate()
    spec.data.validate()
    spec.eval.validate()
    spec.logger.validate()
    obj.export.validate()
    spec.recover.validate()
    if spec.model.shape_only and spec.recover.name != "none":
        raise ValueError(f"{spec.model.name} has random weights: recovery on it is meaningless")
    spec.hf_config, spec.dense_params = check_inputs(spec)
    return spec
