"""Channel criteria: score (or select) every group's units; higher score = keep.

A criterion is registered by name with :func:`register_criterion`; its
:class:`CriterionSpec` says what it needs (calibration data?) and returns (scores, or a
:class:`Selection` of kept units with the clusters behind it). Built-ins, by family:
``magnitude`` (l1, l2, fpgm, bn_scale, random), ``clustering`` (kmeans) and
``activation`` (activation, apoz, hrank, taylor). A user criterion is a function
``(group, context) -> scores`` (one float per unit of the group, higher = more important):

    @pyprune.register_criterion("my_l1")
    def my_l1(group, ctx):
        return ctx.filters(group).abs().sum(1)
"""
from __future__ import annotations

from ._registry import (CRITERIA, Context, CriterionSpec, Selection, available_criteria, block_jobs,
                        criterion_spec, get_criterion, register_criterion)
from . import activation, clustering, magnitude  # noqa: F401  (register the built-ins)

__all__ = ["Context", "Selection", "CriterionSpec", "block_jobs", "register_criterion", "get_criterion", "criterion_spec",
           "available_criteria", "CRITERIA"]
