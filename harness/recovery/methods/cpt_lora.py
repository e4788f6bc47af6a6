"""CPT then LoRA on one budget: CPT for `cpt_fraction` of the optimizer steps, LoRA for the rest."""

from __future__ import annotations

from dataclasses import dataclass

from harness.recovery.methods import cpt, lora
from harness.recovery.registry import RecoveryMethod, register


@dataclass
class CptLoraConfig(cpt.CptConfig, lora.LoraConfig):
    DETERMINING = ("cpt_fraction",)

    name: str = "cpt_lora"
    cpt_fraction: float = 0.5  # share of the budget spent on CPT

    def checks(self):
        return [*super().checks(), (0.0 < self.cpt_fraction < 1.0,
                                    f"recover.cpt_fraction must be in (0, 1), got {self.cpt_fraction}")]


def split(cfg: CptLoraConfig, total: int) -> list[int]:
    """At least one step each; CPT gets `cpt_fraction` of them, rounded."""
    first = min(max(round(total * cfg.cpt_fraction), 1), total - 1)
    return [first, total - first]


register(RecoveryMethod("cpt_lora", CptLoraConfig, (cpt.PHASE, lora.PHASE),
                        needs=frozenset({"training_data"}), split=split))
