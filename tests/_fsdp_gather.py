"""Rank script for test_distributed.py: FSDP2-shard a tiny model (torch's `fully_shard`, per
decoder layer, on gloo), take one optimizer step, gather it back with `gather_plain`, and write
whether every rank's plain model equals the same step taken unsharded in one process."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from harness.models.tiny import tiny_model
from harness.recovery.fsdp import gather_plain, meta_copy
from harness.recovery.methods.lora import attach_lora, merge_lora
from harness.recovery.registry import settings


def build(lora: bool):
    model = tiny_model(seed=0, tie=True)
    return attach_lora(model, settings(name="lora", tokens=1, lora_dropout=0.0)) if lora \
        else model


def step(model, ids):
    """One SGD step on the LM loss of `ids` (every rank sees the same batch)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not any(p.requires_grad for p in params):
        return
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        for p in params:
            p -= 0.5 * p.grad
    model.eval()


def main(out: str) -> None:
    dist.init_process_group("gloo")
    ids = torch.randint(3, 250, (4, 32), generator=torch.Generator().manual_seed(0))
    report = {}
    for lora in (False, True):
        reference = build(lora)
        if lora:  # make the adapters matter: lora_B starts at zero
            with torch.no_grad():
                for name, p in reference.named_parameters():
                    if "lora_B" in name:
                        p.fill_(0.01)
        step(reference, ids)
        model = build(lora)
        if lora:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.fill_(0.01)
        skeleton = meta_copy(model)
        for layer in model.base_model.model.model.layers if lora else model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
        step(model, ids)  # gradients averaged over ranks: the same step as one process
        plain = gather_plain(model, skeleton)
        if lora:
            plain, reference = merge_lora(plain), merge_lora(reference)
        diff = max((a - b).abs().max().item() for a, b in zip(
            plain.state_dict().values(), reference.state_dict().values(), strict=True))
        with torch.no_grad():
            logits = (plain(ids).logits - reference(ids).logits).abs().max().item()
        fresh = merge_lora(build(lora)) if lora else build(lora)
        moved = max((a - b).abs().max().item() for a, b in zip(
            fresh.state_dict().values(), reference.state_dict().values(), strict=True))
        report["lora" if lora else "full"] = {
            "sharded": sharded, "weights_diff": diff, "logits_diff": logits, "moved": moved,
            "tied": plain.lm_head.weight is plain.model.embed_tokens.weight,
            "plain": not any(type(p).__name__ == "DTensor" for p in plain.parameters())}
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())
