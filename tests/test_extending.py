"""Adding a depth criterion or a recovery method takes one Python file and one YAML, nothing else.

A toy module (written here to a temporary directory, imported through HARNESS_PLUGINS) registers
a depth criterion and a recovery method with a setting of its own; a toy config directory
(`hydra.searchpath`) holds one YAML for each. A real run then prunes with the criterion and
recovers with the method end to end, its row records both, and the method's own setting keys
its recovered model and nothing before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd

TOY = '''
from dataclasses import dataclass

from harness.pruning.importance.registry import DepthCriterion, register_depth
from harness.recovery.config import RecoverConfig
from harness.recovery.registry import Phase, RecoveryMethod, register
from harness.recovery.trainer import train_phase

# depth: the earliest candidate blocks score lowest, so they go first
register_depth(DepthCriterion("toy_first", lambda ctx: {i: float(i) for i in ctx.candidates}))


@dataclass
class NormsConfig(RecoverConfig):
    """Train only the normalisation weights (a LayerNorm-tuning baseline)."""

    DETERMINING = ("norm_lr",)
    name: str = "norms"
    norm_lr: float = 1e-3


def run_norms(model, ctx):
    for name, p in model.named_parameters():
        p.requires_grad_("norm" in name)
    model, metrics = train_phase(model, ctx.dataset, ctx.out_dir, ctx.cfg, lr=ctx.cfg.norm_lr,
                                 max_steps=ctx.steps, report_to=ctx.report_to,
                                 callbacks=ctx.callbacks)
    return model.requires_grad_(True).eval(), metrics


register(RecoveryMethod("norms", NormsConfig, (Phase("norms", run_norms, False),),
                        needs=frozenset({"training_data"})))
'''
PRUNE_YAML = "defaults:\n  - depth\n  - _self_\ncriterion: toy_first\nratio: null\nnum_blocks: 2\n"
RECOVER_YAML = "defaults:\n  - schema\n  - _self_\nname: norms\n"


def test_a_toy_criterion_and_method_run_end_to_end(tiny_dir, text_file, tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_entries.py").write_text(textwrap.dedent(TOY))
    for group, text in (("prune", PRUNE_YAML), ("recover", RECOVER_YAML)):
        (tmp_path / "conf" / group).mkdir(parents=True)
        (tmp_path / "conf" / group / f"{'depth_toy' if group == 'prune' else 'norms'}.yaml"
         ).write_text(text)
    env = {**os.environ, "HARNESS_PLUGINS": "toy_entries",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "harness", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            f"model.path={tiny_dir}", f"data.calib_source={text_file}", "data.calib_seq_len=16",
            "data.calib_samples=2", f"eval.ppl_sources=[{text_file}]", "eval.seq_len=32",
            "prune=depth_toy", "prune.protect_first=1", "prune.protect_last=1",
            "recover=norms", "recover.tokens=1024", "recover.seq_len=32", "recover.batch_size=4",
            f"recover.data={text_file}", "recover.disable_tqdm=true", "logger=none",
            f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}"]

    def run(*extra):
        out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        res = subprocess.run([*base, *extra, f"hydra.run.dir={out}"], capture_output=True,
                             text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads((out / "stages.json").read_text())["computed"]

    first = run()
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    row = table.iloc[0]
    assert row["prune.criterion"] == "toy_first" and row["prune/removed"] == "[1, 2]"
    assert row["recover.name"] == "norms" and row["recover.norm_lr"] == 1e-3
    assert row["recover/norms/steps"] == 8 and row["recover/final_loss"] > 0
    assert {s.split("/")[0] for s in first} >= {"importance", "pruned", "recovered", "ppl"}
    second = run("recover.norm_lr=0.01")  # its own setting: a new recovery, same pruned model
    assert {s.split("/")[0] for s in second} == {"recovered", "efficiency", "ppl"}
    assert len(pd.read_csv(tmp_path / "results" / "results.csv")) == 2
    bad = subprocess.run([*base, "recover.norm_lr=0.01", "prune.criterion=toy_last"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert bad.returncode == 2 and "toy_first" in bad.stderr and "Traceback" not in bad.stderr
