"""`python -m harness.reporting.fidelity --write`: results/fidelity.md, peer code vs this harness.

Peers (LLM-Pruner's llama3.py, shortened-llm) were run on the offline protocol's own inputs
outside this repository; their kept sets, parameters and PPL are the fixtures in
tests/fixtures/peers/ (each names the peer commit, command and adaptations). Our side is the
results table: width rows of `experiment=llm_pruner_shape` (LLM-Pruner's shape, both `gqa_fold`
variants, the measured-loss criterion) and depth rows removing 8 or 13 whole blocks. Kept-set
agreement is the % of units (KV groups, MLP channels, blocks) that both keep or both remove; for
width it is read from each run's `model/prune_plan.json` (run_dir column) and carried over from
the previous results/fidelity.csv when that run dir is gone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from harness.data import protocol as P
from harness.io import write_text_atomic
from harness.tracking.results import read_table

SHAPE = "KV groups + MLP channels of layers 4..27 (llama3.py's shape)"
READING = """\
**Reading.** (1) *The fold.* LLM-Pruner's GQA code scores KV group g with query heads
{g, g+3, g+6} (`imp.view(3, 192).sum(0)` in the importance classes of
`LLMPruner/pruner/hf_llama_pruner.py`), while removing the group cuts heads {3g, 3g+1, 3g+2}
(`repeat_kv`'s expand mapping): score and cut refer to different heads. Our default
(`prune.gqa_fold=aligned`) scores the heads it removes; `prune.gqa_fold=llm_pruner` applies the
fold (and LLM-Pruner's count rule: kept channels floored, whole KV heads from the floor of
removed channels, so unit ratio 0.63 removes 1 of 3 groups) and selects exactly the peer's kept
KV groups, query heads and MLP channels in every layer, for every criterion stored
(tests/test_peer_fixtures.py). The MLP channels never depend on the fold: at the same counts
both variants agree on all of them. (2) *Taylor is a poor guide for units this coarse.* The
measured-loss criterion (`prune.criterion=loss`: each KV group removed alone from the dense
model, calibration-loss increase; MLP channels by Taylor as before) drops the truly cheapest
group of every layer by construction; how often each Taylor variant drops that same group is
measured below (chance is 1 in 3). (3) Whichever fold is used, the measured loss beats Taylor at
the same parameter count (table above): the peer's better PPL than our aligned Taylor at 0.33
comes from which group its mis-aligned score happens to drop, not from a better criterion."""


def _mask(hexmask: str) -> set[int]:
    bits = int(hexmask, 16)
    return {c for c in range(len(hexmask) * 4) if bits >> c & 1}


def load_fixtures(folder: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def width_agreement(plan: dict, fixture: dict) -> tuple[float, float, int]:
    """(% KV groups identical, % MLP channels identical, layers with identical KV groups)."""
    kv_same = kv_all = ch_same = ch_all = layers_same = 0
    for i, peer in fixture["layers"].items():
        ours = plan["layers"][str(i)] if str(i) in plan["layers"] else plan["layers"][int(i)]
        n_kv = fixture["dense"]["kv_heads"]
        for unit_set, peer_set, n, acc in (
            (set(ours["kept_kv_heads"]), set(peer["kept_kv_heads"]), n_kv, "kv"),
            (set(ours["kept_mlp_channels"]), _mask(peer["mlp_kept_mask"]),
             len(peer["mlp_kept_mask"]) * 4, "ch"),
        ):
            same = sum((u in unit_set) == (u in peer_set) for u in range(n))
            if acc == "kv":
                kv_same, kv_all = kv_same + same, kv_all + n
                layers_same += same == n
            else:
                ch_same, ch_all = ch_same + same, ch_all + n
    return 100 * kv_same / kv_all, 100 * ch_same / ch_all, layers_same


def _plan(run_dir) -> dict | None:
    path = Path(str(run_dir)) / "model" / "prune_plan.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(x, digits=2) -> str:
    return "—" if x is None or pd.isna(x) else f"{x:,.{digits}f}"


def width_rows(table: pd.DataFrame, fixtures: dict, previous: pd.DataFrame) -> list[dict]:
    rows = []
    exp = table.get("experiment", pd.Series("", index=table.index)).fillna("")
    part = table[exp.str.contains("llm_pruner_shape") & (table["prune.name"] == "width")]
    for name, fx in fixtures.items():
        if not name.startswith("llm_pruner_") or fx.get("runs") is False:
            continue
        base = {"Method": f"LLM-Pruner {fx['criterion']}", "Size": f"unit ratio {fx['unit_ratio']}"}
        rows.append({**base, "Code": f"peer ({fx['peer']['commit'][:7]})",
                     "Params": fx["params"], "wiki_test": (fx["ppl"] or {}).get("wiki_test"),
                     "c4_test": (fx["ppl"] or {}).get("c4_test")})
        crit = fx["criterion"]
        ours = part[(part["prune.criterion"].isin([crit, "loss"]))
                    & (part["prune.unit_ratio"] == fx["unit_ratio"])]
        for _, r in ours.iterrows():
            if r["prune.criterion"] == "loss" and crit != "taylor":
                continue  # loss rows sit under the taylor fixture (same MLP scores)
            fold = r.get("prune.gqa_fold")
            fold = fold if isinstance(fold, str) else "aligned"
            label = "harness loss" if r["prune.criterion"] == "loss" else f"harness {fold}"
            entry = {**base, "Code": label, "Params": r["params/total"],
                     "wiki_test": r.get("ppl/wiki_test"), "c4_test": r.get("ppl/c4_test")}
            plan = _plan(r.get("run_dir"))
            if plan is not None:
                kv, ch, same = width_agreement(plan, fx)
                entry.update({"KV groups agree %": kv, "MLP channels agree %": ch,
                              "layers same KV": same})
            else:
                old = previous[(previous.get("Code") == label) & (previous.get("Method") ==
                               base["Method"]) & (previous.get("Size") == base["Size"])]
                for col in ("KV groups agree %", "MLP channels agree %", "layers same KV"):
                    if len(old) and col in old:
                        entry[col] = old[col].iloc[0]
            rows.append(entry)
    return rows


def depth_rows(table: pd.DataFrame, fixtures: dict) -> list[dict]:
    rows = []
    keep = ((table["prune.name"] == "depth") & (table.get("prune.unit", "block") == "block")
            & (table.get("recover.name", "none").fillna("none") == "none"))
    part = table[keep & table["prune/removed"].notna()]
    for name, fx in fixtures.items():
        if not name.startswith("shortened_llm_"):
            continue
        label = "Shortened LLaMA " + {"ppl": "PPL", "taylor": "Taylor+"}[fx["criterion"]]
        for n, removed in fx["removed"].items():
            base = {"Method": label, "Size": f"{n} blocks"}
            rows.append({**base, "Code": f"peer ({fx['peer']['commit'][:7]})",
                         "Removed": str(removed)})
            ours = part[(part["prune.criterion"] == fx["criterion"])
                        & (part["prune/removed"].map(lambda s: len(json.loads(s))) == int(n))]
            for _, r in ours.head(1).iterrows():
                got = set(json.loads(r["prune/removed"]))
                agree = sum((b in got) == (b in removed) for b in range(30)) / 30 * 100
                rows.append({**base, "Code": "harness", "Params": r["params/total"],
                             "wiki_test": r.get("ppl/wiki_test"), "c4_test": r.get("ppl/c4_test"),
                             "Blocks agree %": agree, "Removed": str(sorted(got))})
    return rows


def cheapest_hits(table: pd.DataFrame, fixtures: dict) -> dict:
    """Layers (of 24) where a Taylor variant at unit ratio 0.33 removes the KV group whose
    removal alone raises the calibration loss least (the `loss` run's choice, by construction)."""
    exp = table.get("experiment", pd.Series("", index=table.index)).fillna("")
    part = table[exp.str.contains("llm_pruner_shape") & (table["prune.unit_ratio"] == 0.33)]
    plans = {}
    for _, r in part.iterrows():
        fold = r.get("prune.gqa_fold")
        key = "loss" if r["prune.criterion"] == "loss" else (
            f"{r['prune.criterion']} {fold if isinstance(fold, str) else 'aligned'}")
        if (plan := _plan(r.get("run_dir"))) is not None:
            plans[key] = {int(i): set(k["kept_kv_heads"]) for i, k in plan["layers"].items()}
    fx = fixtures.get("llm_pruner_taylor_0.33")
    if fx is not None:
        plans["taylor peer"] = {int(i): set(k["kept_kv_heads"]) for i, k in fx["layers"].items()}
    if "loss" not in plans:
        return {}
    best = plans["loss"]
    full = max(len(kept) for kept in best.values())
    pruned = [i for i, kept in best.items() if len(kept) < full]
    return {name: sum(kept[i] == best[i] for i in pruned)
            for name, kept in plans.items() if name != "loss"}


def not_runnable(fixtures: dict) -> str:
    """Peers whose code cannot run on this model, with the error and why (fixture `runs`)."""
    parts = []
    for fx in fixtures.values():
        if fx.get("runs") is False:
            why = " ".join(f"({k}) {w}" for k, w in enumerate(fx["why"], 1))
            parts.append(f"**{fx['peer']['repo']}** ({fx['peer']['commit'][:7]}; `{fx['command']}`)"
                         f" does not run on this model: `{fx['error']}` {why}")
    return "\n\n".join(parts)


def render(width: list[dict], depth: list[dict], hits: dict | None = None,
           blocked: str = "") -> str:
    w = pd.DataFrame(width)
    d = pd.DataFrame(depth)
    if len(w):  # per method and size: the peer first, then our variants
        w = w.sort_values(["Method", "Size"], kind="stable").reset_index(drop=True)
    for frame in (w, d):
        for col in ("wiki_test", "c4_test"):
            if col in frame:
                frame[col] = frame[col].map(_fmt)
        if "Params" in frame:
            frame["Params"] = frame["Params"].map(lambda x: _fmt(x, 0))
        for col in ("KV groups agree %", "MLP channels agree %", "Blocks agree %"):
            if col in frame:
                frame[col] = frame[col].map(lambda x: _fmt(x, 1))
        if "layers same KV" in frame:
            frame["layers same KV"] = frame["layers same KV"].map(
                lambda x: "—" if pd.isna(x) else f"{int(x)}/24")
    return (
        "**Fidelity: peer code vs this harness on the same model and inputs** (SmolLM2-135M, "
        f"the offline protocol's {P.CALIB_SAMPLES} x {P.CALIB_SEQ_LEN} {P.CALIB_SOURCE} "
        f"calibration, PPL at seq_len {P.EVAL_SEQ_LEN}, fp32 CPU; "
        "agreement with the peer row above = % of units both keep or both remove). Peer rows: "
        "tests/fixtures/peers/ (commit, command, adaptations; — = not evaluated with the peer's "
        "code); tests/test_peer_fixtures.py asserts that `prune.gqa_fold=llm_pruner` selects "
        "every peer kept set listed (all layers, KV groups, heads and MLP channels). "
        "Regenerate: "
        "`harness experiment=llm_pruner_shape`, `harness experiment=llm_pruner_shape "
        "prune.criterion=loss prune.gqa_fold=aligned`, `harness experiment=depth_criteria`, then "
        "`python -m harness.reporting.fidelity --write` (the width rows here were run with "
        "`'eval.ppl_sources=[wiki_test]'`, for CPU time).\n\n"
        f"Width, {SHAPE}:\n\n{w.to_markdown(index=False) if len(w) else '(no rows)'}\n\n"
        f"Depth, whole blocks (protect first 4, last 2):\n\n"
        f"{d.to_markdown(index=False) if len(d) else '(no rows)'}\n\n"
        + (f"FLAP and Wanda-sp: {blocked}\n\n" if blocked else "") + f"{READING}\n"
        + ("\nMeasured here: the KV group each variant removes at unit ratio 0.33 is the truly "
           "cheapest one (the loss criterion's choice) in "
           + "; ".join(f"{k}: {v} of 24 layers" for k, v in sorted(hits.items())) + ".\n"
           if hits else "")
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--fixtures", default="tests/fixtures/peers")
    parser.add_argument("--write", action="store_true", help="write results/fidelity.{md,csv}")
    args = parser.parse_args(argv)
    out = Path(args.results_dir)
    table = read_table(out)
    fixtures = load_fixtures(Path(args.fixtures))
    prev_csv = out / "fidelity.csv"
    previous = pd.read_csv(prev_csv) if prev_csv.exists() else pd.DataFrame()
    width, depth = width_rows(table, fixtures, previous), depth_rows(table, fixtures)
    text = render(width, depth, cheapest_hits(table, fixtures), not_runnable(fixtures))
    print(text)
    if args.write:
        write_text_atomic(out / "fidelity.md", text)
        write_text_atomic(prev_csv, pd.DataFrame(width + depth).to_csv(index=False))


if __name__ == "__main__":
    main()
