import multiprocessing as mp

from harness.tracking.results import by_experiment, has_row, read_table, upsert_row


def test_repeated_run_keeps_one_row(tmp_path):
    for value in (1.0, 2.0, 3.0):
        upsert_row(tmp_path, {"run_key": "a", "ppl/wiki_test": value})
    upsert_row(tmp_path, {"run_key": "b", "ppl/wiki_test": 9.0})
    table = read_table(tmp_path)
    assert sorted(table["run_key"]) == ["a", "b"]
    assert table.set_index("run_key").loc["a", "ppl/wiki_test"] == 3.0
    assert has_row(tmp_path, "b") and not has_row(tmp_path, "c")


def test_a_run_shared_by_two_experiments_is_one_row_listed_in_both(tmp_path):
    upsert_row(tmp_path, {"run_key": "d20", "experiment": "depth_criteria", "ppl": 109.0})
    upsert_row(tmp_path, {"run_key": "w20", "experiment": "width_criteria", "ppl": 108.0})
    upsert_row(tmp_path, {"run_key": "d20", "experiment": "severe_retraining", "ppl": 109.0})
    upsert_row(tmp_path, {"run_key": "d20", "experiment": "depth_criteria", "ppl": 109.0})
    table = read_table(tmp_path)
    assert len(table) == 2
    assert table.set_index("run_key").loc["d20", "experiment"] == \
        "depth_criteria,severe_retraining"
    parts = {name: sorted(part["run_key"]) for name, part in by_experiment(table)}
    assert parts == {"depth_criteria": ["d20"], "severe_retraining": ["d20"],
                     "width_criteria": ["w20"]}


def _append(args):
    results_dir, worker = args
    for i in range(10):
        upsert_row(results_dir, {"run_key": f"k{i % 5}-{worker % 4}", "worker": worker, "i": i})


def test_concurrent_appends_lose_nothing_and_duplicate_nothing(tmp_path):
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_append, [(str(tmp_path), w) for w in range(8)])
    table = read_table(tmp_path)
    assert len(table) == 20  # 5 keys x 4 worker classes, each exactly once
    assert table["run_key"].is_unique
