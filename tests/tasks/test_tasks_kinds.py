"""Every task kind in pipeline/config.py's TASK_HEADS has its module with what kinds.py says it holds.

    python -m pytest -q tests/tasks/test_tasks_kinds.py
"""

from __future__ import annotations

from typing import get_args

from torch import nn

from pipeline.config import TASK_HEADS, TaskKind
from pipeline.tasks.kinds import kind_module, trains


def test_every_kind_has_a_module_with_its_annotations_evaluation_and_if_it_trains_head_loss_settle():
    assert get_args(TaskKind) == tuple(TASK_HEADS)
    for kind in TASK_HEADS:
        module = kind_module(kind)
        assert module.__name__ == f"pipeline.tasks.{kind}"
        assert isinstance(module.ANNOTATIONS, tuple) and callable(module.evaluate)
        if trains(kind):
            assert callable(module.build_head) and callable(module.settle) and issubclass(module.LOSS, nn.Module)
    assert [kind for kind in TASK_HEADS if not trains(kind)] == ["propagation"]
