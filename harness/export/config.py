"""`export` config group: write the run's final model for an engine at the end of the run
(`export=gguf` / `export=vllm`, `export.dtype=f16`), the same as `harness export RUN_DIR`."""

from __future__ import annotations

from dataclasses import dataclass

from harness.keys import Keyed

EXPORT_FORMATS = ("none", "gguf", "vllm")
EXPORT_DTYPES = ("f32", "f16", "q8_0")


@dataclass
class ExportConfig(Keyed):
    """Files written beside the row; no result depends on them."""

    DETERMINING = ()
    NOT_DETERMINING = ("format", "dtype")

    format: str = "none"
    dtype: str = "f32"  # gguf weight type

    def validate(self) -> ExportConfig:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"export.format={self.format!r}; choose from {list(EXPORT_FORMATS)}")
        if self.dtype not in EXPORT_DTYPES:
            raise ValueError(f"export.dtype={self.dtype!r}; choose from {list(EXPORT_DTYPES)}")
        return self
