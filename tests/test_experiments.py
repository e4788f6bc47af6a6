"""Every experiment's every sweep cell composes and validates; impossible ones fail early."""

import itertools
from pathlib import Path

import pytest
from test_config import _compose

from harness.config import validate

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_cell_validates(experiment):
    from hydra import compose, initialize_config_dir

    from harness.assets import AssetError, gemma3_dir

    if experiment == "gemma3":  # its model is opt-in (Gemma Terms of Use)
        try:
            gemma3_dir(fetch=False)
        except AssetError as e:
            pytest.skip(str(e))
    if experiment == "engine_parity":  # validation requires llama.cpp (the engines extra)
        pytest.importorskip("llama_cpp")

    from harness.cli import CONF_DIR
    from harness.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        params = base.hydra.sweeper.params or {}
        axes = [[f"{k}={v}" for v in str(vals).split(",")] for k, vals in params.items()]
        cells = list(itertools.product(*axes))
        assert cells, experiment
        for cell in cells:
            spec = validate(compose("config", overrides=[f"experiment={experiment}", *cell]))
            assert spec.raw.experiment == experiment


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["prune=depth", "prune.criterion=flap"], "criterion"),  # a width criterion, depth prune
        (["prune=width", "prune.criterion=block_influence"], "criterion"),
        (["prune=depth", "prune.ratio=0.7"], "maximum"),  # out of SmolLM2's reach
        (["prune=width", "prune.ratio=0.95"], "ratio"),
        (["prune=depth", "prune.ratio=1.5"], "ratio"),
        (["recover=lora", "recover.tokens=0"], "tokens must be > 0"),  # zero budget
        (["model=llama2_7b_shape", "recover=cpt"], "random weights"),
    ],
)
def test_impossible_combinations_fail_at_config_time(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(_compose(overrides))
