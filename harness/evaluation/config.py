"""Typed configs of the evaluation (`eval` group): perplexity sources, zero-shot accuracy
(`ZeroShotConfig`) and speed (`SpeedConfig`).

Plain dataclasses with defaults, so Hydra can register them as structured configs. Each has a
`validate()` that raises `ValueError` with one clear line for a bad value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.data.protocol import EVAL_SEQ_LEN
from harness.data.text import check_source, source_identity
from harness.keys import Keyed

# The seven commonsense tasks whose mean is reported, and LAMBADA (reported separately).
MEAN_TASKS = (
    "boolq",
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
)
TASKS = (*MEAN_TASKS, "lambada_openai")

# Which lm-eval metric each paper's table reports per task.
CONVENTIONS: dict[str, dict[str, str]] = {
    # Shortened LLaMA (Kim et al. 2024): acc_norm where lm-eval has it for the harder tasks.
    "shortened_llama": {
        "boolq": "acc",
        "piqa": "acc",
        "hellaswag": "acc_norm",
        "winogrande": "acc",
        "arc_easy": "acc",
        "arc_challenge": "acc_norm",
        "openbookqa": "acc_norm",
    },
    # LLM-Pruner (Ma et al. 2023): plain accuracy everywhere.
    "llm_pruner": dict.fromkeys(MEAN_TASKS, "acc"),
}
SOURCES = ("local", "hub")
SPEED_BACKENDS = ("hf", "static")


@dataclass
class ZeroShotConfig(Keyed):
    """Zero-shot accuracy with lm-eval.

    `source="local"` reads the offline copies of the benchmarks (no network); `"hub"` runs
    lm-eval's stock tasks as they are (downloads from the HF hub). `limit` caps the documents
    per task (None = all); it is recorded in the results.
    """

    DETERMINING = ("enabled", "tasks", "convention", "limit", "source", "bootstrap_iters")
    NOT_DETERMINING = ("batch_size",)

    enabled: bool = False
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    convention: str = "shortened_llama"
    limit: int | None = None
    batch_size: int = 16
    source: str = "local"
    bootstrap_iters: int = 1000  # lm-eval stderr; only perplexity bootstraps, acc is closed-form

    def key_fields(self) -> dict:
        return super().key_fields() if self.enabled else {"enabled": False}

    def validate(self) -> ZeroShotConfig:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"zeroshot.tasks: unknown {unknown}; choose from {list(TASKS)}")
        if not self.tasks:
            raise ValueError(f"zeroshot.tasks is empty; choose from {list(TASKS)}")
        if self.convention not in CONVENTIONS:
            raise ValueError(
                f"zeroshot.convention={self.convention!r}; choose from {sorted(CONVENTIONS)}"
            )
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit <= 0):
            raise ValueError(f"zeroshot.limit={self.limit!r}; must be a positive int or None")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"zeroshot.batch_size={self.batch_size!r}; must be a positive int")
        if self.source not in SOURCES:
            raise ValueError(f"zeroshot.source={self.source!r}; choose from {list(SOURCES)}")
        if not isinstance(self.bootstrap_iters, int) or self.bootstrap_iters < 0:
            raise ValueError(f"zeroshot.bootstrap_iters={self.bootstrap_iters!r}; must be >= 0")
        return self


def _ints_at_least(name: str, values, low: int = 1) -> None:
    ok = isinstance(values, list | tuple) and len(values) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values)
    if not ok:
        raise ValueError(f"speed.{name}={values!r}; must be a non-empty list of ints >= {low}")


@dataclass
class SpeedConfig(Keyed):
    """Generation speed benchmark (see `harness.evaluation.speed`).

    `backend="hf"`: plain `model.generate` with the dynamic KV cache (Shortened LLaMA protocol).
    `backend="static"`: a greedy decode loop over a `StaticCache`, the one-token step compiled
    with `torch.compile(mode="reduce-overhead")` (CUDA graphs) when `compile` is true.
    Every run generates exactly `output_length` tokens (EOS disabled) after a random prompt of
    `prompt_len` tokens; `warmup` untimed runs, then the median of `repeats` timed runs.
    """

    DETERMINING = ("enabled", "backend", "batch_sizes", "output_lengths", "prompt_len", "warmup",
                   "repeats", "compile", "seed")
    NOT_DETERMINING = ()

    enabled: bool = False
    backend: str = "hf"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 64, 128])
    output_lengths: list[int] = field(default_factory=lambda: [128, 512])
    prompt_len: int = 128
    warmup: int = 2
    repeats: int = 5
    compile: bool = True
    seed: int = 0

    def key_fields(self) -> dict:
        return super().key_fields() if self.enabled else {"enabled": False}

    def validate(self) -> SpeedConfig:
        if self.backend not in SPEED_BACKENDS:
            raise ValueError(f"speed.backend={self.backend!r}; choose from {list(SPEED_BACKENDS)}")
        _ints_at_least("batch_sizes", self.batch_sizes)
        _ints_at_least("output_lengths", self.output_lengths, 2)  # decode time needs >= 2 tokens
        _ints_at_least("prompt_len", [self.prompt_len])
        _ints_at_least("repeats", [self.repeats])
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"speed.warmup={self.warmup!r}; must be an int >= 0")
        return self


ENGINES = ("none", "llamacpp")
ENGINE_DTYPES = ("f32", "f16", "q8_0")


@dataclass
class LlamaCppConfig(Keyed):
    """llama.cpp settings of `eval.engine=llamacpp` (see `harness.evaluation.engine`): the GGUF
    weight type (f32 for parity), threads for prefill and decode, the batched setting, and the
    speed protocol (`speed=false` measures PPL only)."""

    DETERMINING = ("dtype", "threads", "batch", "prompt_len", "gen_len", "warmup", "repeats",
                   "speed")
    NOT_DETERMINING = ()

    dtype: str = "f32"
    threads: int = 2
    batch: int = 8
    prompt_len: int = 128
    gen_len: int = 64
    warmup: int = 1
    repeats: int = 3
    speed: bool = True

    def validate(self) -> LlamaCppConfig:
        if self.dtype not in ENGINE_DTYPES:
            raise ValueError(f"eval.llamacpp.dtype={self.dtype!r}; choose from {list(ENGINE_DTYPES)}")
        for name in ("threads", "batch", "prompt_len", "gen_len", "repeats"):
            _ints_at_least(name, [getattr(self, name)])
        return self


@dataclass
class EvalConfig(Keyed):
    """What to measure on the final model. Perplexity follows PROTOCOL.md on each source."""

    DETERMINING = ("ppl_sources", "seq_len", "zeroshot", "speed", "engine", "llamacpp")
    NOT_DETERMINING = ("batch_size",)

    ppl_sources: list[str] = field(default_factory=lambda: ["wiki_test", "c4_test"])
    seq_len: int = EVAL_SEQ_LEN
    batch_size: int = 8
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    engine: str = "none"  # llamacpp: also evaluate inside llama.cpp (harness/evaluation/engine.py)
    llamacpp: LlamaCppConfig = field(default_factory=LlamaCppConfig)

    def key_fields(self) -> dict:
        """Texts by what they hold (a local file by its bytes, see data.text.source_identity);
        no engine, no engine fields (so rows from before engines keep their keys)."""
        out = super().key_fields()
        out["ppl_sources"] = [source_identity(s) for s in self.ppl_sources]
        if self.engine in ("none", None):  # None: an empty cell of an older results row
            del out["engine"], out["llamacpp"]
        return out

    def validate(self) -> None:
        for source in self.ppl_sources:
            check_source(source, role="evaluation")
        if self.seq_len < 2 or self.batch_size < 1:
            raise ValueError("eval.seq_len must be >= 2 and eval.batch_size >= 1")
        if self.zeroshot.enabled:
            self.zeroshot.validate()
        if self.speed.enabled:
            self.speed.validate()
        if self.engine not in ENGINES:
            raise ValueError(f"eval.engine={self.engine!r}; choose from {list(ENGINES)}")
        if self.engine == "llamacpp":
            self.llamacpp.validate()
            import importlib.util

            if importlib.util.find_spec("llama_cpp") is None:
                raise ValueError("eval.engine=llamacpp needs llama-cpp-python: pip install "
                                 "'width-vs-depth[engines]' (or `make engines`)")
