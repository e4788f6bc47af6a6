"""Bad input fails at composition or validation time, before any model loads."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from harness.cli import CONF_DIR
from harness.config import register_configs, validate


def _compose(overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_default_config_is_the_protocol():
    cfg = _compose([])
    assert cfg.model.name == "smollm2_135m"
    assert list(cfg.eval.ppl_sources) == ["wiki_test", "c4_test"]
    assert cfg.eval.seq_len == 128 and cfg.data.calib_samples == 10
    assert cfg.prune.name == "none" and cfg.recover.name == "none"


@pytest.mark.parametrize("override", ["eval.seq_lenn=64", "eval.seq_len=abc", "model.nme=x"])
def test_typos_and_wrong_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        _compose([override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=gpt9", "unknown model 'gpt9'; choose from"),
        ("eval.ppl_sources=[nope]", "unknown text source 'nope'"),
        ("data.calib_source=wiki_test", "test split"),
        ("eval.seq_len=1", "seq_len must be >= 2"),
        ("logger.mode=loud", "logger.mode must be"),
        ("model.dtype=int3", "model.dtype must be"),
    ],
)
def test_bad_values_fail_validation_with_a_clear_message(override, message):
    with pytest.raises(ValueError, match=message):
        validate(_compose([override]))


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "harness", "model.name=gpt9", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown model 'gpt9'" in errors[0]
    assert "Loading weights" not in res.stderr
