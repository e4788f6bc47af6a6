"""`pip install .` (not editable) works: the wheel carries the Hydra configs and experiments, and
the installed `harness` runs from any directory.

The wheel is built from a copy of just what packaging reads (pyproject.toml, README.md,
harness/), so nothing in the checkout is written; it is installed with `--no-deps --no-index`
into a fresh venv that sees this venv's dependencies through a path file, so nothing downloads.
"""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, (cmd, res.stdout[-2000:], res.stderr[-2000:])
    return res


def test_wheel_installs_and_runs_from_another_directory(tiny_dir, text_file, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("harness", "hydra_plugins"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp_path / "dist", src])
    wheel = next((tmp_path / "dist").glob("width_vs_depth-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "harness/conf/config.yaml" in names and "harness/conf/experiment/quick.yaml" in names
    assert "hydra_plugins/harness_sweeper/sweeper.py" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
          "-q", wheel])
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                     ).stdout.strip())
    # Dependencies from this venv; a bare path line adds the directory but runs none of its
    # .pth files, so this checkout's editable install stays out.
    (site / "zz_dev_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([py, "-c", "import harness; print(harness.__file__)"], cwd=elsewhere)
    assert where.stdout.strip().startswith(str(venv))
    helptext = _run([venv / "bin" / "harness", "--help"], cwd=elsewhere).stdout
    assert "experiment:" in helptext and "quick" in helptext and "gemma3_270m" in helptext
    _run([venv / "bin" / "harness", "experiment=quick", "hydra.mode=RUN", "+variant=dense",
          f"model.path={tiny_dir}", f"eval.ppl_sources=[{text_file}]", "eval.seq_len=32",
          f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}",
          "logger=none"], cwd=elsewhere)
    rows = (tmp_path / "results" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "quick" in rows[1]
