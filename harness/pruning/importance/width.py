"""Importance of width-pruning groups: attention units and MLP channels, per pruned layer.

A group's *members* are the tensor slices removed with it (the family's adapter says where they
live, fused or not): for a query head its q rows (+bias) and o columns; for a KV group also its
k/v rows (+biases); for an MLP channel its gate/up rows (+biases) and down column; norms that
span a whole q or k projection (OLMo 2) are members too. As in LLM-Pruner, each member gets a score (the sum of
its per-weight scores over the slice) and `reduction` (sum/mean/max/prod) combines the members.
Because the per-member score is a plain sum, every criterion streams exactly: gradients are
reduced per member in a post-accumulate-grad hook and freed at once (peak ~ weights + one
layer's gradients). Attention scores are stored per query head (q_head) or per KV group.

Criteria (w weight, g gradient of the mean LM loss over the whole calibration batch,
F = mean over samples of per-sample g_i^2, i.e. LLM-Pruner's `acc_grad`, batch of 1):
  random; l1 |w|; l2 w^2 (LLM-Pruner's MagnitudeImportance p=2); taylor |w g| (param_first);
  taylor2 w^2 F (param_second, streamed per sample as (w g_i)^2 / n); vector |sum w g| per row
  or column (LLM-Pruner's `vectorize`); param_mix |w g - 0.5 w^2 F| (needs F per weight before
  g arrives, so it alone keeps one fp32 buffer per scored weight between its two passes);
  wanda_sp mean_rows |W| * ||x_col|| on the o/down projections (FLAP's structured Wanda);
  flap: Var(x_col) * ||W_col||^2 (FLAP's WIFV; squared again for attention, as FLAP does),
  with the exact token variance over all calibration tokens (FLAP's incremental formula
  drops the first sample's spread) and per-layer mean/std kept for its standardised search;
  loss: the measured calibration-loss increase of removing one attention unit alone
  (width_loss.py); its MLP channels are scored by `mlp_criterion` (default taylor).
`gqa_fold=llm_pruner` scores KV groups with LLM-Pruner's fold (see `_per_unit`).
Activation statistics come from the dense model (one pass, block by block: one block on the
compute device at a time, see harness.pruning.importance.sequential), so scores are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.models.adapters import adapter_for
from harness.models.adapters.base import Member
from harness.pruning.importance.grads import streamed_grads
from harness.pruning.importance.registry import WidthCriterion, register_width, width_criteria_used
from harness.pruning.importance.sequential import compute_device, walk
from harness.pruning.importance.width_loss import measured_loss_scores
from harness.pruning.ratio import effective_unit, resolve_layers

REDUCTIONS = ("sum", "mean", "max", "prod")


@dataclass
class WidthScores:
    """Scores per pruned layer: `attn[l]` per query head or KV group, `mlp[l]` per channel."""

    criterion: str
    reduction: str
    attn_unit: str  # effective unit the attention scores are per (q_head: per head)
    layers: list[int]
    attn: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)
    attn_stats: dict[int, tuple[float, float]] = field(default_factory=dict)  # flap mean, std
    mlp_stats: dict[int, tuple[float, float]] = field(default_factory=dict)
    attn_mean_inp: dict[int, torch.Tensor] = field(default_factory=dict)  # o input mean
    mlp_mean_inp: dict[int, torch.Tensor] = field(default_factory=dict)  # down input mean
    calibration: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FoldedMember(Member):
    """A q or o member of a KV group scored with LLM-Pruner's fold (`_per_unit`)."""

    fold: int = 1


def _per_unit(t: torch.Tensor, axis: int, n: int, vector: bool = False, fold: int = 1):
    """Sum a per-weight score over each unit's slice (|row or column sum| first if `vector`);
    `t` is one member's slice, its `n` units along `axis`.

    fold > 1 is LLM-Pruner's GQA alignment (`imp.view(fold, -1).sum(0)` in the importance
    classes of LLMPruner/pruner/hf_llama_pruner.py): the n_q*hd q/o scores are summed onto the
    n_kv*hd KV channels, so KV group g collects query heads g, g+n_kv, g+2*n_kv, ... although its
    removal cuts heads g*fold .. g*fold+fold-1."""
    if t.dim() == 2:
        t = t.sum(dim=1 - axis)
    if vector:
        t = t.abs()
    if fold > 1:
        t = t.reshape(fold, -1).sum(0)
    return t.reshape(n, -1).sum(1).double()


def _fold(m) -> int:
    return getattr(m, "fold", 1)


def llm_pruner_folded(adapter, layer, members: list) -> list:
    """KV-group members with the query-head pieces (q rows, o columns) marked for the fold."""
    p = adapter.pieces(layer)
    group = p["q"].size // p["k"].size
    heads = {(id(p[k].module.weight), p[k].offset) for k in ("q", "o")}
    heads |= {(id(p["q"].module.bias), p["q"].offset)} if getattr(
        p["q"].module, "bias", None) is not None else set()
    return [FoldedMember(m.param, m.axis, m.offset, m.size, group)
            if (id(m.param), m.offset) in heads else m for m in members]


def _reduce(member_scores: list[torch.Tensor], how: str) -> torch.Tensor:
    s = torch.stack(member_scores)
    if how == "sum":
        return s.sum(0)
    if how == "mean":
        return s.mean(0)
    if how == "max":
        return s.max(0).values
    return s.prod(0)


@dataclass
class ScoringContext:
    """What a registered scorer gets: fill `out.attn[l]` / `out.mlp[l]` for l in `layers`, kind
    in `kinds`. `calib` is the [samples, seq] calibration batch (None if none is needed)."""

    model: torch.nn.Module
    cfg: object
    calib: torch.Tensor | None
    layers: list[int]
    kinds: list[str]
    unit: str
    out: WidthScores

    def slots(self) -> dict:
        """{(layer, kind): (units, [Member])} for every scored group (see adapters.base)."""
        adapter = adapter_for(self.model)
        layers = adapter.layers(self.model)
        out = {(i, k): adapter.members(layers[i], k, self.unit)
               for i in self.layers for k in self.kinds}
        if getattr(self.cfg, "gqa_fold", "aligned") == "llm_pruner" and self.unit == "kv_group":
            out = {(i, k): (n, llm_pruner_folded(adapter, layers[i], ms) if k == "attn" else ms)
                   for (i, k), (n, ms) in out.items()}
        return out

    def reduce_into_out(self, member: dict, slots: dict) -> None:
        """Combine per-member unit scores {((layer, kind), j): tensor} with `cfg.reduction`."""
        for key, (_, ms) in slots.items():
            scores = [member[(key, j)] for j in range(len(ms))]
            getattr(self.out, key[1])[key[0]] = _reduce(scores, self.cfg.reduction)


def score_groups(model, cfg, calib_ids: torch.Tensor | None = None) -> WidthScores:
    """Importance of every attention unit and MLP channel in the layers `cfg` prunes."""
    adapter = adapter_for(model)
    layers_all = adapter.layers(model)
    layers = resolve_layers(cfg.layer_start, cfg.layer_end, len(layers_all))
    shape = adapter.shape(layers_all[0])
    unit = effective_unit(cfg.attn_unit, shape.n_q, shape.n_kv)
    kinds = [k for k, on in (("attn", cfg.prune_attn), ("mlp", cfg.prune_mlp)) if on]
    out = WidthScores(cfg.criterion, cfg.reduction, unit, layers)
    # MLP channels may be scored by another criterion (prune.mlp_criterion; taylor for `loss`)
    used = width_criteria_used(cfg)
    jobs = [(used[0], kinds)] if len(used) == 1 else [
        (c, [k]) for c, k in zip(used, ("attn", "mlp"), strict=True) if k in kinds]
    if any(c.needs_calibration for c, _ in jobs):
        if calib_ids is None or calib_ids.dim() != 2:
            names = "/".join(c.name for c, _ in jobs)
            raise ValueError(f"criterion {names!r} needs calib_ids as a [samples, seq] tensor")
        calib_ids = calib_ids.to(model.get_input_embeddings().weight.device)
        out.calibration = {"num_samples": calib_ids.shape[0], "seq_len": calib_ids.shape[1]}
    for c, job_kinds in jobs:
        c.scorer(ScoringContext(model, cfg, calib_ids, layers, job_kinds, unit, out))
    return out


def _grad_member_scores(model, slots, passes, ids, calib_info) -> dict:
    """Per-member unit scores from gradients, streamed: each hook reduces, then frees p.grad.

    `passes` = (per-sample mode or None, whole-batch mode or None): per-sample backward passes
    (`second` sums (w g_i)^2 / n, `fisher` stores F for `mix`) run first, then one backward over
    the whole batch (`first` |w g|, `vector` |sum w g|, `mix` |w g - 0.5 w^2 F|)."""
    info: dict[int, list] = {}  # a fused weight holds several members
    for key, (n, ms) in slots.items():
        for j, m in enumerate(ms):
            info.setdefault(id(m.param), []).append(((key, j), m, n))
    member = {slot: 0.0 for entries in info.values() for slot, _, _ in entries}
    fisher: dict = {}
    state = {"mode": "first", "scale": 1.0}

    def hook(p: torch.Tensor) -> None:
        grad, weight = p.grad.float(), p.detach().float()
        mode = state["mode"]
        for slot, m, n in info[id(p)]:
            g, w, axis, fold = m.take(grad), m.take(weight), m.axis, _fold(m)
            if mode == "fisher":
                prev = fisher.get(slot)
                fisher[slot] = g.square() * state["scale"] + (0 if prev is None else prev)
            elif mode == "second":
                member[slot] = member[slot] + _per_unit(
                    (w * g).square(), axis, n, fold=fold) * state["scale"]
            elif mode == "mix":
                s = (w * g - 0.5 * w.square() * fisher.pop(slot)).abs()
                member[slot] = member[slot] + _per_unit(s, axis, n, fold=fold)
            else:
                wg = w * g
                member[slot] = member[slot] + _per_unit(
                    wg.abs() if mode == "first" else wg, axis, n, mode == "vector", fold
                )

    losses = []
    with streamed_grads(model, [p for p in model.parameters() if id(p) in info], hook):
        per_sample, whole_batch = passes
        if per_sample is not None:
            state.update(mode=per_sample, scale=1 / len(ids))
            for i in range(len(ids)):
                model(ids[i : i + 1], labels=ids[i : i + 1], use_cache=False).loss.backward()
        if whole_batch is not None:
            state["mode"] = whole_batch
            loss = model(ids, labels=ids, use_cache=False).loss
            losses.append(loss.item())
            loss.backward()
    if losses:
        calib_info["loss"] = losses[0]
    return member


def _input_statistics(ctx: ScoringContext, device=None):
    """Yield ((layer, kind), (tokens, sum x, sum x^2, output projection)) for every scored
    layer: statistics, in float64 over all calibration tokens, of the inputs of the attention's
    and the MLP's output projections. Block by block (harness.pruning.importance.sequential); each layer's
    pair is yielded while its block is on the compute device, then dropped."""
    adapter = adapter_for(ctx.model)
    scored, stats = set(ctx.layers), {}

    def make(key):
        def pre(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            s = stats.setdefault(key, [0, 0.0, 0.0])
            s[0] += x.shape[0]
            s[1] = s[1] + x.sum(0)
            s[2] = s[2] + x.square().sum(0)

        return pre

    def hooks(i, layer):
        if i not in scored:
            return []
        return [adapter.out_proj(layer, k).register_forward_pre_hook(make((i, k)))
                for k in ctx.kinds]

    ready = []

    def collect(i, layer, _kwargs, _hidden):  # the block is still on the device here
        ready.extend(((i, k), (*stats.pop((i, k)), adapter.out_proj(layer, k)))
                     for k in ctx.kinds if (i, k) in stats)

    for i, _, _ in walk(ctx.model, ctx.calib, compute_device(ctx.model, device), hooks, collect):
        yield from ready
        ready.clear()
        if i >= max(ctx.layers, default=-1):
            break


def _units(ctx: ScoringContext, i: int, kind: str) -> int:
    adapter = adapter_for(ctx.model)
    return adapter.members(adapter.layers(ctx.model)[i], kind, ctx.unit)[0]


def _wanda_sp_scores(ctx: ScoringContext) -> None:
    """mean over rows of |W| * ||x_col|| (root mean square over samples), summed per unit."""
    for (i, kind), (_, _, s2, mod) in _input_statistics(ctx):
        w = mod.weight.detach().double()
        col = (w.abs() * (s2.to(w.device) / len(ctx.calib)).sqrt()).mean(0)
        getattr(ctx.out, kind)[i] = col.reshape(_units(ctx, i, kind), -1).sum(1).cpu()


def _flap_scores(ctx: ScoringContext) -> None:
    """Var(x_col) * ||W_col||^2 (squared for attention), per-layer mean/std, input means."""
    out = ctx.out
    for (i, kind), (cnt, s1, s2, mod) in _input_statistics(ctx):
        w = mod.weight.detach().double()
        s1, s2 = s1.to(w.device), s2.to(w.device)
        var = (s2 - s1.square() / cnt) / (cnt - 1)
        col = var * w.square().sum(0)
        if kind == "attn":
            col = col.square()
        getattr(out, kind)[i] = col.reshape(_units(ctx, i, kind), -1).mean(1).cpu()
        getattr(out, f"{kind}_stats")[i] = (col.mean().item(), col.std().item())
        getattr(out, f"{kind}_mean_inp")[i] = (s1 / cnt).float().cpu()


def _random_scores(ctx: ScoringContext) -> None:
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    for (i, kind), (n, _) in ctx.slots().items():
        getattr(ctx.out, kind)[i] = torch.rand(n, generator=gen, dtype=torch.float64)


def _magnitude_scorer(f):
    def scorer(ctx: ScoringContext) -> None:
        slots = ctx.slots()
        with torch.no_grad():
            member = {
                (key, j): _per_unit(f(m.take(m.param.detach()).float()), m.axis, n, fold=_fold(m))
                for key, (n, ms) in slots.items()
                for j, m in enumerate(ms)
            }
        ctx.reduce_into_out(member, slots)

    return scorer


def _gradient_scorer(per_sample: str | None, whole_batch: str | None):
    def scorer(ctx: ScoringContext) -> None:
        slots = ctx.slots()
        member = _grad_member_scores(ctx.model, slots, (per_sample, whole_batch), ctx.calib,
                                     ctx.out.calibration)
        ctx.reduce_into_out(member, slots)

    return scorer


for _crit in (
    WidthCriterion("random", _random_scores, key_fields=("seed",)),
    WidthCriterion("l1", _magnitude_scorer(torch.abs), gqa_foldable=True),
    WidthCriterion("l2", _magnitude_scorer(torch.square), gqa_foldable=True),
    WidthCriterion("taylor", _gradient_scorer(None, "first"), needs=frozenset({"gradients"}),
                   gqa_foldable=True),
    WidthCriterion("taylor2", _gradient_scorer("second", None), needs=frozenset({"fisher"}),
                   gqa_foldable=True),
    WidthCriterion("vector", _gradient_scorer(None, "vector"), needs=frozenset({"gradients"}),
                   gqa_foldable=True),
    WidthCriterion("param_mix", _gradient_scorer("fisher", "mix"),
                   needs=frozenset({"gradients", "fisher"}), gqa_foldable=True),
    WidthCriterion("wanda_sp", _wanda_sp_scores, needs=frozenset({"activations"})),
    WidthCriterion("flap", _flap_scores, needs=frozenset({"activations"}),
                   joint_selection=True, compensates_bias=True),
    WidthCriterion("loss", measured_loss_scores, needs=frozenset({"losses"}),
                   scores_mlp=False),
):
    register_width(_crit)
