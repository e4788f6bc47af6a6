"""One run: load -> importance -> prune -> recover -> evaluate, every stage through the cache.

`Run` only orders the stages and caches them; what each stage does comes from its registry
(pruning methods, recovery methods, evaluations) and what keys it from harness/identity.py. A
ratio sweep scores importance once, LoRA and CPT share one pruned model, turning off a progress
bar retrains nothing, and a finished run re-executed loads nothing and computes nothing.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from pathlib import Path

from harness import identity
from harness.assets import cache_root
from harness.cache.store import StageCache, link_tree
from harness.config import RunSpec
from harness.data.text import calibration_ids
from harness.distributed import is_main, on_main
from harness.evaluation.perplexity import bos_id, with_bos
from harness.evaluation.registry import EvalContext, measurements
from harness.keys import config_key
from harness.models.loader import ModelConfig, load_model, save_model
from harness.pruning import methods as pruning
from harness.recovery.registry import METHODS
from harness.recovery.trainer import EVAL_LOG, LOG_NAME


class Run:
    """Executes one validated run spec; the model is loaded only if some stage needs it."""

    def __init__(self, spec: RunSpec, run_dir: Path, cache: StageCache | None = None,
                 callbacks=()):
        self.spec, self.run_dir, self.callbacks = spec, Path(run_dir), list(callbacks)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cache = cache or StageCache(spec.cache_dir or cache_root() / "stages")
        self.keys = identity.stage_keys(spec)  # {stage label: key}
        self.stage_dir = {label: evaluation.name for evaluation, label, _ in measurements(spec)}
        self.times: dict[str, float] = {}
        self._tokenizer = None
        self.report_to = "none"  # "wandb" when the run's W&B run is open: the Trainer reports live
        self.model_dir: Path | None = None  # the final model's cache dir, once finished
        self.pruned_dir: Path | None = None  # the pruned model's (holds prune_plan.json)
        self.trained = False  # whether this run trained (else the recovered model was cached)

    def uncached_model_stages(self) -> list[str]:
        """The model-writing stages ("pruned", "recovered") this run would compute."""
        return [s for s in ("pruned", "recovered")
                if s in self.keys and not self.cache.has(s, config_key(self.keys[s]))]

    def fully_cached(self) -> bool:
        """Every stage of this run has a cache entry: executing it computes nothing."""
        return all(self.cache.has(self.stage_dir.get(label, label), config_key(key))
                   for label, key in self.keys.items() if label != "importance")

    # ---- the run ------------------------------------------------------------------------
    def execute(self) -> dict:
        """The run's metrics. With several processes, rank 0 alone prunes, evaluates and writes;
        every rank trains; all ranks return the same metrics."""
        metrics, model_dir = {}, None
        if "pruned" in self.keys:
            model_dir = self.pruned_dir = on_main(self._pruned)
            metrics.update(on_main(lambda: pruning.plan_metrics(model_dir)))
        if "recovered" in self.keys:
            model_dir, recovered = self._recovered(model_dir)
            metrics.update(recovered)
        return on_main(lambda: self._finish(model_dir, metrics))

    # ---- stages -------------------------------------------------------------------------
    def _pruned(self) -> Path:
        """The pruned model (from the cache when it was built before); its dir holds the plan."""
        def build(tmp: Path) -> dict:
            model = self._load(self.spec.model)
            calib = self._calibration(model)
            scores = self._importance(model, calib)
            plan = self._timed("prune", lambda: pruning.apply(model, self.spec.prune, calib, scores))
            save_model(model, self.tokenizer, tmp / "model", plan=plan)
            return {"plan": plan}

        path, _ = self.cache.get_or_compute("pruned", self.keys["pruned"], build)
        return path / "model"

    def _importance(self, model, calib):
        """Scores from the cache, or computed once and cached; None when not reusable."""
        if "importance" not in self.keys:
            return None

        def build(tmp: Path) -> dict:
            pruning.save_scores(pruning.score(model, self.spec.prune, calib), tmp)
            return {}

        path, _ = self._timed("importance", lambda: self.cache.get_or_compute(
            "importance", self.keys["importance"], build))
        return pruning.load_scores(path)

    def _recovered(self, start_dir: Path | None) -> tuple[Path, dict]:
        """Train on every rank (unless an intact entry exists); rank 0 alone publishes it.
        Rank 0 holds the key's cache lock throughout, so an identical run elsewhere waits for
        this one's entry instead of training into the same work dir."""
        key = config_key(self.keys["recovered"])
        with self.cache.lock("recovered", key) if is_main() else nullcontext():
            return self._train_and_publish(key, start_dir)

    def _train_and_publish(self, key: str, start_dir: Path | None) -> tuple[Path, dict]:
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
            shutil.copy2(work / LOG_NAME, tmp / LOG_NAME)
            if (work / EVAL_LOG).exists():  # the held-out curve (recover.eval_every)
                shutil.copy2(work / EVAL_LOG, tmp / EVAL_LOG)
            return {"metrics": trained["metrics"]}

        path, entry = on_main(lambda: self.cache.get_or_compute(
            "recovered", self.keys["recovered"], publish))
        trained.clear()
        on_main(lambda: shutil.rmtree(work, ignore_errors=True))
        return path / "model", entry["meta"]["metrics"]

    def _train(self, start_dir: Path | None, work: Path):
        """Every rank: load the start model (and the teacher if the method needs one), train."""
        from harness.recovery.fsdp import start_config
        from harness.recovery.run import recover

        cfg = self.spec.recover
        load = start_config(self.spec.model, cfg)  # FSDP: into CPU memory before sharding
        model = self._load(self._at(start_dir, load) if start_dir else load)
        teacher = load_model(load)[0] if "teacher" in METHODS.get(cfg.name).needs else None
        return recover(model, cfg, None, work, teacher=teacher, tokenizer=self.tokenizer,
                       report_to=self.report_to, callbacks=self.callbacks, cache=self.cache)

    def _finish(self, model_dir: Path | None, metrics: dict) -> dict:
        """Rank 0: expose the final model and its training curve in the run dir, evaluate."""
        self.model_dir = model_dir
        if model_dir is not None:
            link_tree(model_dir, self.run_dir / "model")
            for log in (LOG_NAME, EVAL_LOG):
                if (model_dir.parent / log).exists():
                    shutil.copy2(model_dir.parent / log, self.run_dir / log)
        metrics.update(self._evaluate(model_dir))
        metrics.update({f"time/{k}_s": round(v, 3) for k, v in self.times.items()})
        metrics["model/shape_only"] = self.spec.model.shape_only
        return metrics

    def _evaluate(self, model_dir: Path | None) -> dict:
        """Every measurement is its own cache entry, so adding one never redoes the others."""
        loaded = []

        def model():
            if not loaded:
                loaded.append(self._load(self._at(model_dir) if model_dir else self.spec.model))
            return loaded[0]

        ctx = EvalContext(self.spec, model, lambda: self.tokenizer, self.run_dir)
        out = {}
        for evaluation, label, fields in measurements(self.spec):
            result = self._timed(label.replace("/", "_"), lambda e=evaluation, lb=label, f=fields:
                                 self.cache.json_stage(e.name, self.keys[lb],
                                                       lambda: e.run(ctx, lb, f)))
            if evaluation.files is not None:
                evaluation.files(ctx, result)
            out.update(evaluation.metrics(label, fields, result))
        return out

    # ---- models and data ----------------------------------------------------------------
    def _load(self, cfg: ModelConfig):
        model, tokenizer = self._timed("load", lambda: load_model(cfg))
        self._tokenizer = self._tokenizer or tokenizer
        return model

    def _at(self, model_dir: Path, like: ModelConfig | None = None) -> ModelConfig:
        """The config that loads a model this run wrote, the way `like` (the run's) says."""
        m = like or self.spec.model
        return ModelConfig(path=str(model_dir), dtype=m.dtype, device=m.device,
                           attn_implementation=m.attn_implementation)

    def _calibration(self, model):
        d = self.spec.data
        ids = calibration_ids(self.tokenizer, d.calib_source, d.calib_samples,
                              d.calib_seq_len, d.calib_seed)
        bos = bos_id(model, self.tokenizer)
        return ids if bos is None else with_bos(ids, bos)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from harness.models.loader import model_source

            self._tokenizer = AutoTokenizer.from_pretrained(model_source(self.spec.model))
        return self._tokenizer

    def _timed(self, stage: str, fn):
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start
