"""The attentive probe (V-JEPA's: a learned query cross-attends over all of a view's tokens,
then an MLP and a Linear classifier; pipeline/tasks/heads.py AttentiveProbe) as a batched grid:
G probes with their own initialisation, evaluated at once with torch.func.vmap.

    forward, params = attentive_grid(dim, num_classes, members=G, seed=0)
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from pipeline.probe.grid import Forward
from pipeline.tasks.heads import AttentiveProbe


def attentive_grid(dim: int, num_classes: int, members: int, seed: int) -> tuple[Forward, dict[str, Tensor]]:
    torch.manual_seed(seed)
    probes = [AttentiveProbe(dim, num_classes) for _ in range(members)]
    params, _ = stack_module_state(probes)
    params = {name: value.detach().clone() for name, value in params.items()}
    template = copy.deepcopy(probes[0]).to("meta")

    def one(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(template, p, (x,))

    def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return vmap(one, in_dims=(0, None))(p, x)

    return forward, params
