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
        ("+recover.deepspeed=ds.json", "unknown key recover.deepspeed"),  # `+` is no way around
        ("+eval.zeroshot.limitt=5", "unknown key eval.zeroshot.limitt"),
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


def _sized(overrides):
    """Compose, let the overridden size replace the config files' size, validate."""
    from harness.config import apply_size_overrides

    return validate(apply_size_overrides(_compose(overrides), overrides))


@pytest.mark.parametrize(
    "overrides, size",
    [
        (["prune=depth", "prune.num_blocks=8"], dict(ratio=None, num_blocks=8, blocks=None)),
        (["prune=depth", "prune.blocks=[5,6]"], dict(ratio=None, num_blocks=None, blocks=[5, 6])),
        (["prune=depth"], dict(ratio=0.2, num_blocks=None, blocks=None)),  # the group default
        (["prune=width", "prune.unit_ratio=0.3"], dict(ratio=None, unit_ratio=0.3)),
        (["prune=width", "prune.ratio=0.35"], dict(ratio=0.35, unit_ratio=None)),
        # an experiment file's size (num_blocks: 8) gives way to a ratio from the command line
        (["experiment=criteria_ablation", "prune.ratio=0.1"],
         dict(ratio=0.1, num_blocks=None, blocks=None)),
    ],
)
def test_the_size_a_user_gives_replaces_the_default_size(overrides, size):
    prune = _sized(overrides).prune
    assert {k: getattr(prune, k) for k in size} == size


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["prune=depth", "prune.num_blocks=8", "prune.ratio=0.2"],
         r"exactly one of prune.ratio, prune.num_blocks, prune.blocks \(got \['ratio', 'num_blocks'\]\)"),
        (["prune=width", "prune.unit_ratio=0.3", "prune.ratio=0.2"],
         r"exactly one of prune.ratio .* \(got \['ratio', 'unit_ratio'\]\)"),
    ],
)
def test_two_sizes_given_explicitly_are_an_error_naming_both(overrides, message):
    with pytest.raises(ValueError, match=message):
        _sized(overrides)
