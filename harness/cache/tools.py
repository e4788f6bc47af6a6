"""`harness cache verify` and `harness cache gc`: check every stage-cache entry; remove the ones
no results row needs.

verify  re-hashes every entry against its manifest (adopting entries from before manifests) and
        moves bad ones aside to `<cache>/.corrupt/`, as a run reading them would; exit code 1
        when any entry was bad.
gc      an entry is needed when the run behind a results row used it (`<cache>/runs/<run_key>.json`,
        written by every run) or a needed entry was built from it (`inputs` in its entry.json).
        Everything else is listed with its size: unneeded entries, entries moved aside, and the
        checkpoints of recoveries that never finished (`work/`). Nothing is deleted without
        `--yes`. Items changed in the last `--min-age-hours` (default 1) are kept, since a
        running sweep writes its rows only as each run ends: run gc when no sweep is running.
        Rows without a stage record (runs from before records existed, or with another
        cache_dir) make gc refuse, as their entries are unknown; re-run them (their stages are
        cached) or pass `--force` to treat them as needing nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from harness.cache.store import CORRUPT, ENTRY, RESERVED, StageCache
from harness.io import read_json
from harness.tracking.results import TABLE, read_table


def entries(root: Path) -> list[str]:
    """'<stage>/<key>' of every entry directory in the cache (temporary ones excluded)."""
    return sorted(f"{stage.name}/{entry.name}" for stage in root.iterdir()
                  if stage.is_dir() and stage.name not in RESERVED
                  for entry in stage.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def newest_change(path: Path) -> float:
    return max([path.stat().st_mtime] + [f.stat().st_mtime for f in path.rglob("*")])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def verify(root: Path) -> int:
    """Hash every entry; move bad ones aside. Returns the number of bad entries."""
    cache, names = StageCache(root), entries(root)
    bad, total = 0, sum(size(root / n) for n in names)
    for name in names:
        if not cache.intact(*name.split("/"), rehash=True):  # moves a bad entry aside, with one warning line
            bad += 1
            print(f"bad    {name} (moved to {CORRUPT}/)")
    print(f"{len(names)} entries, {human(total)}: "
          f"{'all intact' if not bad else f'{bad} bad, moved aside to be recomputed'}")
    return bad


def needed(root: Path, results_dirs: list[str]) -> tuple[set[str], list[str]]:
    """(entries the results rows need, row descriptions that have no stage record)."""
    want, unrecorded = [], []
    for results in results_dirs:
        table = read_table(results)
        for run_key in table.get("run_key", []):
            record = root / "runs" / f"{run_key}.json"
            if record.exists():
                want += read_json(record)["stages"]
            else:
                unrecorded.append(f"{Path(results) / TABLE}:{run_key}")
    seen: set[str] = set()
    while want:  # an entry needs the entries it was built from
        name = want.pop()
        if name not in seen:
            seen.add(name)
            entry = root / name / ENTRY
            if entry.exists():
                want += read_json(entry).get("inputs", [])
    return seen, unrecorded


def gc(root: Path, results_dirs: list[str], yes: bool, force: bool, min_age_h: float) -> int:
    keep, unrecorded = needed(root, results_dirs)
    if unrecorded and not force:
        print(f"error: {len(unrecorded)} results rows (e.g. {unrecorded[0]}) have no stage record"
              f" in {root / 'runs'} (made before records existed, or with another cache_dir): "
              "re-run them (cached, so quick) or pass --force", file=sys.stderr)
        return 2
    candidates = [(n, "no results row uses it") for n in entries(root) if n not in keep]
    for sub, why in ((CORRUPT, "moved aside as bad"), ("work", "unfinished recovery")):
        if (root / sub).is_dir():
            candidates += [(f"{sub}/{p.name}", why) for p in sorted((root / sub).iterdir())]
    young = time.time() - min_age_h * 3600
    freed = kept_young = 0
    for name, why in candidates:
        path = root / name
        if newest_change(path) > young:
            kept_young += 1
            continue
        n = size(path)
        freed += n
        print(f"{'removed' if yes else 'remove '}  {name}  {human(n)}  ({why})")
        if yes:
            shutil.rmtree(path, ignore_errors=True)
    kept = [n for n in entries(root) if n in keep]
    print(f"keep    {len(kept)} entries ({human(sum(size(root / n) for n in kept))}) needed by "
          f"results rows in {', '.join(results_dirs)}"
          + (f"; {kept_young} items younger than {min_age_h:g} h kept" if kept_young else ""))
    print(f"{'freed' if yes else 'would free'} {human(freed)}"
          + ("" if yes or not freed else ": run again with --yes to delete"))
    return 0


def main(argv: list[str]) -> int:
    from harness.assets import cache_root

    parser = argparse.ArgumentParser(prog="harness cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["verify", "gc"])
    parser.add_argument("--cache-dir", default=None, help="stage cache (default "
                        "$HARNESS_CACHE/stages, as cache_dir= of a run)")
    parser.add_argument("--results-dir", action="append", default=None,
                        help="results dir whose rows need entries (repeatable; default "
                        "$HARNESS_RESULTS or results)")
    parser.add_argument("--yes", action="store_true", help="gc: delete (default: only list)")
    parser.add_argument("--force", action="store_true",
                        help="gc: proceed although some rows have no stage record")
    parser.add_argument("--min-age-hours", type=float, default=1.0,
                        help="gc: keep items changed more recently (default 1)")
    args = parser.parse_args(argv)
    root = Path(args.cache_dir or cache_root() / "stages")
    if not root.is_dir():
        print(f"error: no stage cache at {root}: pass --cache-dir", file=sys.stderr)
        return 2
    if args.command == "verify":
        return 1 if verify(root) else 0
    results = args.results_dir or [os.environ.get("HARNESS_RESULTS", "results")]
    return gc(root, results, args.yes, args.force, args.min_age_hours)
