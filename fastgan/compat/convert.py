"""fastgan.convert: swap the layers of known ProGAN ports for their fastgan-backed mirrors.

    report = fastgan.convert(model)          # in place; print(report) says what changed
    fastgan.convert(model, dry_run=True)     # prints the same report, changes nothing

Every module of `model` is matched against the table in `rules.py` (by class name and
structure), children before parents, so a port's block is converted only when all its layers
are. A converted module keeps its identity, parameters, buffers and state_dict keys (its class is
swapped for the compat one), so optimizers, references and checkpoints keep working. Then every
plain nn.Sequential folds what it can into the compat layers it holds (`fusion.py`). Anything the
table names but whose structure differs (a subclass that redefines forward, hooks, other
attributes) is left as it is and listed with the reason. Spectral norm on any layer is matched by
the second table, `site_rules.py`.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from . import fusion as fusion_
from .rules import Rule, check_own_class, is_compat, rules_for
from .site_rules import SITE_RULES, SiteRule

__all__ = ["ConversionReport", "convert"]


@dataclasses.dataclass
class ConversionReport:
    """What convert did (or, with dry_run, would do).

    Attributes:
        model: the converted model (the one passed in unless inplace=False; with dry_run, the
            unchanged model).
        replaced: (path, original class, compat class) per converted module.
        fused: (path, what) per fusion: a block's own fused forward or a Sequential fold.
        left_alone: (path, class, reason) per module the table names but did not convert.
        dry_run: whether nothing was changed.
    """

    model: nn.Module
    replaced: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    fused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    left_alone: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    dry_run: bool = False

    def __str__(self) -> str:
        head = "fastgan.convert (dry run: nothing changed)" if self.dry_run else "fastgan.convert"
        lines = [f"{head}: {len(self.replaced)} replaced, {len(self.fused)} fused, "
                 f"{len(self.left_alone)} left alone"]
        for title, rows in (("replaced", [f"{p}: {a} -> {b}" for p, a, b in self.replaced]),
                            ("fused", [f"{p}: {w}" for p, w in self.fused]),
                            ("left alone", [f"{p}: {c}: {r}" for p, c, r in self.left_alone])):
            if rows:
                lines.append(f"{title}:")
                lines += [f"  {r}" for r in rows]
        return "\n".join(lines)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _post_order(model: nn.Module):
    """(path, module) for every distinct module, children before their parent."""
    seen = set()

    def walk(m, path):
        if id(m) in seen:
            return
        seen.add(id(m))
        for name, child in m.named_children():
            if child is not None:
                yield from walk(child, f"{path}.{name}" if path else name)
        yield path, m

    yield from walk(model, "")


@dataclasses.dataclass
class _Plan:
    swaps: list[tuple[nn.Module, Rule]] = dataclasses.field(default_factory=list)
    sites: list[tuple[nn.Module, str, SiteRule]] = dataclasses.field(default_factory=list)
    folds: list[tuple[nn.Sequential, fusion_.Fusion]] = dataclasses.field(default_factory=list)


def _plan_class(m, where, planned, targets, plan, report, shared) -> None:
    """Match m against the class table; plan its swap or report why not."""
    found = None if is_compat(m) else rules_for(m)
    if found is None:
        return
    base, rules = found
    reason = check_own_class(m, base)
    reasons = [reason] if reason else []
    for rule in rules if reason is None else ():
        why = rule.why_not(m, planned)
        if why is None and rule.changes_child and shared(getattr(m, rule.changes_child)):
            why = (f"its {rule.changes_child} is also held by another module, which would "
                   "lose the hook converting removes")
        if why is None:
            targets[id(m)] = rule.target
            plan.swaps.append((m, rule))
            report.replaced.append((where, _qualname(type(m)), _qualname(rule.target)))
            if rule.fuses:
                report.fused.append((where, rule.fuses))
            return
        reasons.append(f"not {rule.port}'s {rule.class_name}: {why}")
    report.left_alone.append((where, _qualname(type(m)), "; ".join(reasons)))


def _plan_sites(m, path, plan, report) -> None:
    """Match m's tensors against the site table (spectral norm)."""
    for site_rule in SITE_RULES:
        for name in site_rule.sites(m):
            at = f"{path}.{name}" if path else name
            why = site_rule.why_not(m, name)
            if why is None:
                plan.sites.append((m, name, site_rule))
                report.replaced.append((at, site_rule.kind, site_rule.target))
            else:
                report.left_alone.append((at, site_rule.kind, why))


def _plan(model: nn.Module, report: ConversionReport) -> _Plan:
    plan, targets = _Plan(), {}

    def planned(m: nn.Module) -> type:
        return targets.get(id(m), type(m))

    def compat_class(m: nn.Module) -> type | None:
        return targets.get(id(m)) or (type(m) if is_compat(m) else None)

    # slots (parent, name) holding each module: a layer in two slots is not fused in one of them
    slots: dict[int, int] = {}
    for _, parent in _post_order(model):
        for child in parent._modules.values():
            if child is not None:
                slots[id(child)] = slots.get(id(child), 0) + 1

    def shared(m: nn.Module) -> bool:
        return slots.get(id(m), 0) > 1

    for path, m in _post_order(model):
        where = path or "(root)"
        _plan_class(m, where, planned, targets, plan, report, shared)
        _plan_sites(m, path, plan, report)
        if isinstance(m, nn.Sequential):
            for f in fusion_.plan_sequential(m, compat_class, shared):
                plan.folds.append((m, f))
                report.fused.append((where, f.describe()))
    return plan


def _deepcopy(model: nn.Module) -> nn.Module:
    """copy.deepcopy, also of a model whose modules hold a hook's product as a plain tensor
    attribute (rosinality's EqualLR `weight`, torch's legacy spectral/weight norm), which has a
    graph after a forward and which deepcopy refuses. The copy holds it detached: the hook
    recomputes it before the next call, and convert drops it where it removes the hook."""
    memo = {}
    for m in model.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Tensor) and v.grad_fn is not None:
                memo[id(v)] = v.detach().clone()
    return copy.deepcopy(model, memo)


def convert(model: nn.Module, *, inplace: bool = True,
            dry_run: bool = False) -> ConversionReport:
    """Replace the recognized layers of `model` with fastgan-backed ones, keeping every
    parameter, buffer and state_dict key.

    Args:
        model: any nn.Module.
        inplace: convert `model` itself (True) or a deep copy of it (False; the report's
            `model` is the copy).
        dry_run: change nothing; print the report of what convert would do, and return it.

    Returns:
        A ConversionReport (print it for a summary).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("inplace", inplace), ("dry_run", dry_run)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {v!r}")
    if not inplace and not dry_run:
        model = _deepcopy(model)
    report = ConversionReport(model, dry_run=dry_run)
    plan = _plan(model, report)
    if dry_run:
        print(report)
        return report
    for m, rule in plan.swaps:
        rule.prepare(m)
        m.__class__ = rule.target
    for m, name, site_rule in plan.sites:
        site_rule.apply(m, name)
    for seq, f in plan.folds:
        fusion_.apply_fusion(seq, f)
    return report
