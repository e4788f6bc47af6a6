"""Only the adapters know a family's module names: no other file under harness/ spells a
projection name (code, docstrings, comments or configs), so a new family never needs an edit
outside its adapter."""

import re
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "harness"
ADAPTERS = HARNESS / "models" / "adapters"
PROJECTIONS = re.compile(r"\b(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv_proj|"
                         r"gate_up_proj)\b")


def test_no_projection_name_outside_the_adapters():
    found = []
    for path in sorted(HARNESS.rglob("*")):
        if path.suffix not in (".py", ".yaml") or ADAPTERS in path.parents:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PROJECTIONS.search(line):
                found.append(f"{path.relative_to(HARNESS.parent)}:{n}: {line.strip()}")
    assert not found, "projection names outside harness/models/adapters/:\n" + "\n".join(found)


def test_the_check_sees_a_projection_name():
    assert PROJECTIONS.search("adapter.out_proj(layer) is o_proj here")
    assert not PROJECTIONS.search("out_proj, proj, q_projection")
