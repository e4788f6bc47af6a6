"""Knowledge distillation: continued pretraining against the dense teacher's logits.

Minitron recipe: forward KL(teacher || student) on temperature-softened next-token distributions,
scaled by T^2, averaged over target positions. `kd_alpha` mixes in the plain LM loss:
loss = kd_alpha * KD + (1 - kd_alpha) * LM. The teacher is frozen and runs in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.recovery.data import IGNORE
from harness.recovery.methods.cpt import CptConfig, run_cpt
from harness.recovery.registry import Phase, PhaseContext, RecoveryMethod, register
from harness.recovery.trainer import RecoveryTrainer


@dataclass
class KdConfig(CptConfig):
    DETERMINING = ("kd_temperature", "kd_alpha")

    name: str = "kd"
    kd_temperature: float = 1.0
    kd_alpha: float = 1.0  # loss = kd_alpha * KD + (1 - kd_alpha) * LM

    def checks(self):
        return [
            *super().checks(),
            (self.kd_temperature > 0,
             f"recover.kd_temperature must be > 0, got {self.kd_temperature}"),
            (0 <= self.kd_alpha <= 1, f"recover.kd_alpha must be in [0, 1], got {self.kd_alpha}"),
        ]


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean forward KL over positions whose next token is a target, times T^2."""
    s = student_logits[:, :-1].float() / temperature
    t = teacher_logits[:, :-1].float() / temperature
    mask = (labels[:, 1:] != IGNORE).float()
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none")
    return (kl.sum(-1) * mask).sum() / mask.sum().clamp(min=1) * temperature**2


class KDTrainer(RecoveryTrainer):
    """`Trainer` whose loss is the distillation loss from a frozen teacher."""

    def __init__(self, *args, teacher, temperature: float = 1.0, alpha: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        # Our loss is a per-micro-batch mean, so let the Trainer divide it for grad accumulation.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # the held-out curve: plain next-token loss, as PPL reads it
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        feed = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        outputs = model(**feed, labels=labels if self.alpha < 1 else None)
        with torch.no_grad():
            teacher_logits = self.teacher(**feed).logits
        loss = distill_loss(outputs.logits, teacher_logits, labels, self.temperature)
        if self.alpha < 1:
            loss = self.alpha * loss + (1 - self.alpha) * outputs.loss
        return (loss, outputs) if return_outputs else loss


def run_kd(model, ctx: PhaseContext):
    """Distil `ctx.teacher` into every parameter of `model`; return (model in eval mode, metrics)."""
    if ctx.teacher is None:
        raise ValueError("recover=kd needs the dense teacher model")
    vocab_s, vocab_t = model.config.vocab_size, ctx.teacher.config.vocab_size
    if vocab_s != vocab_t:
        raise ValueError(f"KD needs one vocabulary: student has {vocab_s}, teacher {vocab_t}")
    return run_cpt(model, ctx, trainer_cls=KDTrainer, teacher=ctx.teacher,
                   temperature=ctx.cfg.kd_temperature, alpha=ctx.cfg.kd_alpha)


register(RecoveryMethod("kd", KdConfig, (Phase("kd", run_kd),),
                        needs=frozenset({"training_data", "teacher"})))
