"""Width-pruning arithmetic: layer geometry, total-param ratio -> unit counts, counts -> kept units.

Units of attention (per pruned layer):
  - `kv_group`: one KV head with all query heads that share it (`n_kv` units per layer);
  - `q_head` on GQA: a *slot* = one query head from every KV group, so groups stay equal-sized
    (`group` units per layer, each `n_kv` heads). On MHA (group size 1) `q_head` is `kv_group`.
At least one unit and `align` MLP channels stay in every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from harness.models.adapters import adapter_for
from harness.models.adapters.base import LayerShape
from harness.models.params import count_params
from harness.pruning.importance import registry as criteria

TOL = 0.01  # reach the requested total-param fraction within 1% of total params


def resolve_layers(start: int, end: int, n_layers: int) -> list[int]:
    """Indices in [start, end); negative values count from the end (Python style)."""
    s = start + n_layers if start < 0 else start
    e = end + n_layers if end < 0 else end
    if not (0 <= s < n_layers and 0 < e <= n_layers) or s >= e:
        raise ValueError(
            f"layer range [{start}, {end}) resolves to [{s}, {e}), which is empty or outside "
            f"the model's {n_layers} layers"
        )
    return list(range(s, e))


def effective_unit(attn_unit: str, n_q: int, n_kv: int) -> str:
    return "kv_group" if attn_unit == "kv_group" or n_q == n_kv else "q_head"


@dataclass(frozen=True)
class Geometry(LayerShape):
    """The layer shape shared by all decoder layers, the parameters one unit removes (read off
    the adapter's members, so fused weights, biases and head-spanning norms count), and the
    model's total parameter count."""

    n_layers: int = 0
    unit_params: int = 0  # one attention unit: a KV group, or a q_head slot (one head per group)
    channel_params: int = 0  # one MLP channel
    total: int = 0
    unit: str = "q_head"  # effective attention unit

    @classmethod
    def from_model(cls, model, attn_unit: str) -> Geometry:
        adapter = adapter_for(model)
        layers = adapter.layers(model)
        shapes = {adapter.shape(layer) for layer in layers}
        if len(shapes) != 1:
            raise ValueError(
                "model layers have different shapes; width pruning needs a dense model"
            )
        s = shapes.pop()
        unit = effective_unit(attn_unit, s.n_q, s.n_kv)
        per_group = _params_per_unit(adapter, layers[0], "attn", "kv_group")
        per_head = _params_per_unit(adapter, layers[0], "attn", "q_head")
        unit_params = per_group if unit == "kv_group" else s.n_kv * per_head
        channel = _params_per_unit(adapter, layers[0], "mlp", unit)
        return cls(**vars(s), n_layers=len(layers), unit_params=unit_params,
                   channel_params=channel, total=count_params(model)["total"], unit=unit)

    @classmethod
    def from_config(cls, hf_config, attn_unit: str) -> Geometry:
        """Geometry without weights: the model is built on the meta device."""
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        return cls.from_model(model, attn_unit)

    @property
    def group(self) -> int:
        return self.n_q // self.n_kv

    @property
    def n_units(self) -> int:
        return self.n_kv if self.unit == "kv_group" else self.group


def _params_per_unit(adapter, layer, kind: str, unit: str) -> int:
    n, members = adapter.members(layer, kind, unit)
    return sum(m.numel for m in members) // n


@dataclass
class Counts:
    """Totals over the pruned layers: attention units removed and MLP channels kept."""

    attn_removed: int
    mlp_kept: int
    unit_ratio: float  # requested, or solved from the total-param ratio
    est_removed: int  # estimated params removed (net of FLAP's added biases)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def _llm_pruner_removed(r: float, units: int, size: int) -> int:
    """Units removed by LLM-Pruner's MetaPruner for ratio r: it keeps int(units*size*(1-r))
    channels and removes whole units (heads of `size` channels) from the rest."""
    channels = units * size
    return (channels - int(channels * (1 - r))) // size


def removed_params(geo: Geometry, cfg, n_pruned: int, attn_removed: int, mlp_kept: int) -> int:
    """Params removed by these totals, minus biases FLAP compensation adds (upper bound)."""
    dropped = n_pruned * geo.inter - mlp_kept
    rem = attn_removed * geo.unit_params + dropped * geo.channel_params
    if criteria.compensates(cfg):
        rem -= (
            n_pruned
            * geo.hidden
            * ((attn_removed > 0 and not geo.o_bias) + (dropped > 0 and not geo.down_bias))
        )
    return rem


def solve_counts(geo: Geometry, cfg, n_pruned: int) -> Counts:
    """Counts for `cfg.unit_ratio`, or the counts whose removed params best hit `cfg.ratio`.

    Ratio mode: one unit ratio r0 for heads and channels (LLM-Pruner's rule); attention is
    rounded to its (coarse) granularity and MLP channels absorb the rest. Raises ValueError
    when no feasible counts land within 1% of total params, or a layer would be emptied."""
    uniform = cfg.scope == "uniform"
    p, a_max = n_pruned, n_pruned * (geo.n_units - 1) if cfg.prune_attn else 0
    a_step, k_step = (p, p * cfg.align) if uniform else (1, cfg.align)
    k_min, k_max = p * cfg.align, p * geo.inter
    if (
        cfg.prune_attn
        and geo.unit == "kv_group"
        and geo.n_kv == 1
        and (cfg.ratio or cfg.unit_ratio)
    ):
        raise ValueError("attn_unit='kv_group' cannot prune a model with 1 KV head; use q_head")
    if cfg.unit_ratio is not None:
        r = cfg.unit_ratio
        peer = getattr(cfg, "gqa_fold", "aligned") == "llm_pruner"  # LLM-Pruner's count rule
        if peer:
            per = _llm_pruner_removed(r, geo.n_units, geo.head_dim) if cfg.prune_attn else 0
            a = per * p if uniform else (
                _llm_pruner_removed(r, geo.n_units * p, geo.head_dim) if cfg.prune_attn else 0)
        else:
            per = _round(r * geo.n_units) if cfg.prune_attn else 0
            a = per * p if uniform else (_round(r * geo.n_units * p) if cfg.prune_attn else 0)
        if per >= geo.n_units or a > a_max:
            raise ValueError(
                f"unit_ratio={r} would remove all {geo.n_units} attention units ({geo.unit}) of a layer"
            )
        k = k_max
        if cfg.prune_mlp and r > 0:
            keep = int if peer else _round
            k = (
                keep((1 - r) * geo.inter / cfg.align) * cfg.align * p
                if uniform
                else keep((1 - r) * k_max / cfg.align) * cfg.align
            )
            if k < k_min:
                raise ValueError(
                    f"unit_ratio={r} would leave fewer than align={cfg.align} MLP channels in a layer"
                )
        return Counts(a, k, r, removed_params(geo, cfg, p, a, k))
    target = cfg.ratio * geo.total
    denom = p * (
        cfg.prune_attn * geo.n_units * geo.unit_params
        + cfg.prune_mlp * geo.inter * geo.channel_params
    )
    r0 = target / denom if denom else 0.0
    a_pref = _round(r0 * geo.n_units * p / a_step) * a_step
    best = None
    for a in range(0, a_max + 1, a_step):
        ks = [k_max]
        if cfg.prune_mlp:
            left = target - a * geo.unit_params
            k0 = _round((k_max - left / geo.channel_params) / k_step) * k_step
            ks += [min(max(k, k_min), k_max) for k in (k0 - k_step, k0, k0 + k_step)]
        for k in ks:
            err = abs(removed_params(geo, cfg, p, a, k) - target)
            key = (err > TOL * geo.total, abs(a - a_pref), err)
            if best is None or key < best[0]:
                best = (key, a, k)
    (infeasible, _, err), a, k = best
    if infeasible:
        raise ValueError(
            f"ratio={cfg.ratio} cannot be reached within 1% of total params (best misses by "
            f"{err / geo.total:.2%}) with attn_unit={cfg.attn_unit}, scope={cfg.scope}, align={cfg.align}"
        )
    return Counts(a, k, r0, removed_params(geo, cfg, p, a, k))


# ---------------------------------------------------------------- selection (scores -> kept units)


def unit_order(geo: Geometry, head_scores: torch.Tensor) -> tuple[list[float], list]:
    """Removable attention units of one layer, lowest score first: (scores, units).

    kv_group: a unit is a KV head index. q_head: slot k = the k-th lowest head of every group
    (score = mean over groups), so removing the first m slots drops m heads per group."""
    s = head_scores.double()
    if geo.unit == "kv_group":
        order = torch.sort(s, stable=True).indices
        return s[order].tolist(), order.tolist()
    sorted_s, idx = torch.sort(s.view(geo.n_kv, geo.group), dim=1, stable=True)
    heads = idx + torch.arange(geo.n_kv).unsqueeze(1) * geo.group
    return sorted_s.mean(0).tolist(), heads.t().tolist()


def largest_remainder(kept: dict[int, int], align: int, total: int) -> dict[int, int]:
    """Round per-layer kept channels to multiples of `align` so that they sum to `total`."""
    floors = {i: k // align * align for i, k in kept.items()}
    extra = (total - sum(floors.values())) // align
    order = sorted(kept, key=lambda i: (-(kept[i] - floors[i]), i))
    for i in order[: max(extra, 0)]:
        floors[i] += align
    return floors


def take_lowest(cands: list[tuple], n: int) -> dict[int, int]:
    """Count per layer among the `n` lowest (score, layer, rank, ...) candidates."""
    counts: dict[int, int] = {}
    for c in sorted(cands)[:n]:
        counts[c[1]] = counts.get(c[1], 0) + 1
    return counts


def take_joint(cands: list[tuple], target: float) -> tuple[dict[int, int], dict[int, int]]:
    """FLAP's joint search: remove lowest standardised units (score, layer, rank, kind, cost)
    until removed params are closest to `target`. Returns per-layer counts (attn, mlp)."""
    cands = sorted(cands)
    cum, best_n, best_err = 0, 0, abs(target)
    for n, c in enumerate(cands, 1):
        cum += c[4]
        if abs(cum - target) < best_err:
            best_n, best_err = n, abs(cum - target)
    attn: dict[int, int] = {}
    mlp: dict[int, int] = {}
    for c in cands[:best_n]:
        d = attn if c[3] == "attn" else mlp
        d[c[1]] = d.get(c[1], 0) + 1
    return attn, mlp
