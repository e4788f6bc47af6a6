"""Read an offline W&B run back: the records of a `run-<id>.wandb` transaction log.

wandb 0.31 no longer ships its Python reader (wandb.sdk.internal.datastore), so this walks the
log's framing (a 7-byte header ':W&B' + magic 0xBEE1 + version, then 32 KiB blocks of chunks,
each `crc32 u32, length u16, type u8` with type 1 full, 2 first, 3 middle, 4 last) and parses
every record with wandb's own protobuf, `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: str | Path):
    from wandb.proto.wandb_internal_pb2 import Record

    data = Path(path).read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        chunk, pos = data[pos:pos + length], pos + length
        if kind in (1, 2):
            parts = chunk
        elif kind in (3, 4):
            parts += chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(parts)
            yield record


def read_run(run_dir: str | Path) -> dict:
    """{'run': RunRecord, 'history': [{key: json value}], 'artifacts': [(name, type)]} of the
    single offline run W&B wrote under `run_dir` (its `wandb/` folder)."""
    import json

    (log,) = Path(run_dir).glob("wandb/*-run-*/run-*.wandb")  # not latest-run, a link
    out = {"run": None, "history": [], "artifacts": []}
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "artifact":
            out["artifacts"].append((record.artifact.name, record.artifact.type))
    return out
