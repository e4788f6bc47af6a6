"""Knowledge distillation: continued pretraining against the dense teacher's logits.

Minitron recipe: forward KL(teacher || student) on temperature-softened next-token distributions,
scaled by T^2, averaged over target positions. `kd_alpha` mixes in the plain LM loss:
loss = kd_alpha * KD + (1 - kd_alpha) * LM. The teacher is frozen and runs in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from harness.recovery.data import IGNORE
from harness.recovery.trainer import RecoveryTrainer, train_phase


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
        labels = inputs["labels"]
        feed = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        outputs = model(**feed, labels=labels if self.alpha < 1 else None)
        with torch.no_grad():
            teacher_logits = self.teacher(**feed).logits
        loss = distill_loss(outputs.logits, teacher_logits, labels, self.temperature)
        if self.alpha < 1:
            loss = self.alpha * loss + (1 - self.alpha) * outputs.loss
        return (loss, outputs) if return_outputs else loss


def run_kd(
    model, cfg, dataset, out_dir: str | Path, max_steps: int, teacher=None, **phase_kwargs
) -> tuple[object, dict]:
    """Distil `teacher` into every parameter of `model`; return (model in eval mode, metrics)."""
    if teacher is None:
        raise ValueError("recover.name=kd needs the dense teacher model")
    vocab_s, vocab_t = model.config.vocab_size, teacher.config.vocab_size
    if vocab_s != vocab_t:
        raise ValueError(f"KD needs one vocabulary: student has {vocab_s}, teacher {vocab_t}")
    model.requires_grad_(True)
    model, metrics = train_phase(
        model,
        dataset,
        out_dir,
        cfg,
        lr=cfg.lr,
        max_steps=max_steps,
        trainer_cls=KDTrainer,
        teacher=teacher,
        temperature=cfg.kd_temperature,
        alpha=cfg.kd_alpha,
        **phase_kwargs,
    )
    metrics["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model.eval(), metrics
