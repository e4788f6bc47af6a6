"""Width vs depth structured pruning of LLMs, with recovery and evaluation on one protocol."""

__version__ = "0.1.0"

from pathlib import Path

# The Hydra configs (config groups; experiments are `conf/experiment/*.yaml`). They live inside
# the package so an installed harness finds them; the repo root links `conf` and `experiments`.
CONF_DIR = Path(__file__).resolve().parent / "conf"
