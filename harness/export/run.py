"""`harness export RUN_DIR [--format gguf|vllm] [--dtype f32|f16|q8_0]`: the run's final model
(pruned, recovered with LoRA merged, or the dense model it started from) written for an engine
into `<run dir>/export/` atomically: `model-<dtype>.gguf` or `vllm/`, with `export.json` saying
what was written (arch, kept blocks, dropped blocks, zero-MLP blocks)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.export import ExportError
from harness.io import atomic_dir, write_json_atomic

FORMATS = ("gguf", "vllm")


def model_dir_of(run_dir: Path) -> str:
    """The run's final model: `model/` when the run changed it, else the model it started from."""
    if (run_dir / "model" / "config.json").exists():
        return str(run_dir / "model")
    from omegaconf import OmegaConf

    from harness.models.loader import ModelConfig, model_source

    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise ExportError(f"{run_dir} is not a run dir (no model/ and no config.yaml)")
    m = OmegaConf.to_container(OmegaConf.load(cfg_file)).get("model", {})
    return model_source(ModelConfig(name=m.get("name", "smollm2_135m"), path=m.get("path")))


def gguf_name(dtype: str) -> str:
    return f"model-{dtype}.gguf"


def export_model(model_dir: str | Path, out_dir: str | Path, fmt: str = "gguf",
                 dtype: str = "f32") -> Path:
    """Export the model in `model_dir` into `out_dir` (created or replaced atomically per file)."""
    from harness.models.loader import ModelConfig, load_model

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, tokenizer = load_model(ModelConfig(path=str(model_dir), dtype="float32", device="cpu",
                                              attn_implementation="eager"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "gguf":
        from harness.export.gguf_file import write_gguf

        target = out_dir / gguf_name(dtype)
        tmp = out_dir / f".{target.name}.tmp{os.getpid()}"
        try:
            info = write_gguf(model, tokenizer, tmp, dtype)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        from harness.export.vllm import block_configs, write_vllm

        block_configs(model)  # refuse before writing anything
        target = out_dir / "vllm"
        with atomic_dir(target) as tmp:
            info = write_vllm(model, tokenizer, tmp)
    info = {**info, "source": str(model_dir), "file": target.name}
    manifest = out_dir / "export.json"
    done = json.loads(manifest.read_text()) if manifest.exists() else {}
    done[target.name] = info
    write_json_atomic(manifest, done)
    return target


def export_run(run_dir: str | Path, fmt: str = "gguf", dtype: str = "f32") -> Path:
    """Export a run dir's final model into `<run dir>/export/`."""
    run_dir = Path(run_dir)
    return export_model(model_dir_of(run_dir), run_dir / "export", fmt, dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--format", default="gguf", choices=FORMATS)
    parser.add_argument("--dtype", default="f32", choices=("f32", "f16", "q8_0"))
    args = parser.parse_args(argv)
    try:
        if not args.run_dir.is_dir():
            raise ExportError(f"{args.run_dir} is not a directory")
        target = export_run(args.run_dir, args.format, args.dtype)
    except ExportError as e:
        print(f"error: cannot export: {e}", file=sys.stderr)
        return 2
    print(target)
    return 0
