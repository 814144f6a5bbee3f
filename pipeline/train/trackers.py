"""Experiment trackers (train.report_to): TensorBoard, Weights & Biases, MLflow - the same scalars
and pictures to each, on rank 0.

    trackers = Trackers(["tensorboard", "wandb"], out, params={"data.batch_size": 8, ...}, resumed_from=0)
    trackers.scalars({"train/loss": 0.9}, step=10)
    trackers.image("train/picture", hwc_uint8, step=10)
    trackers.close()

TensorBoard is our own SummaryWriter under OUT/tb (purged past the resumed step). W&B and MLflow
go through Accelerate's tracker classes; both are optional installs (`pip install vssl[trackers]`).
A resumed run continues the same tracker run: W&B's run id is derived from the output folder,
MLflow's is kept in OUT/trackers.json. A tracker that cannot start (not installed, no
credentials, an unreachable server) is one warning line and is left out; training goes on.
W&B reads its usual settings (WANDB_PROJECT, WANDB_MODE=offline, ...); MLflow its tracking URI
(MLFLOW_TRACKING_URI, default OUT/mlruns) and MLFLOW_EXPERIMENT_NAME (default "vssl").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


class _TensorBoard:
    def __init__(self, out: Path, params: dict, resumed_from: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tb"), purge_step=resumed_from + 1)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, out: Path, params: dict, resumed_from: int) -> None:
        from accelerate.tracking import WandBTracker

        run_id = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
        self.tracker = WandBTracker(os.environ.get("WANDB_PROJECT", "vssl"), dir=str(out), id=run_id,
                                    name=out.name, resume="allow")
        self.tracker.start()
        self.tracker.store_init_configuration(params)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.tracker.log(values, step=step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.tracker.log_images({name: [image]}, step=step)

    def close(self) -> None:
        self.tracker.finish()


class _MLflow:
    def __init__(self, out: Path, params: dict, resumed_from: int) -> None:
        import mlflow
        from accelerate.tracking import MLflowTracker

        self.mlflow, self.state = mlflow, out / "trackers.json"
        saved = json.loads(self.state.read_text()) if self.state.is_file() and resumed_from else {}
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri())
        self.tracker = MLflowTracker(os.environ.get("MLFLOW_EXPERIMENT_NAME", "vssl"),
                                     run_id=saved.get("mlflow_run_id"), run_name=out.name)
        self.tracker.start()
        self.state.write_text(json.dumps({**saved, "mlflow_run_id": self.tracker.active_run.info.run_id}))
        if not saved:
            self.tracker.store_init_configuration(params)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.tracker.log(values, step=step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.mlflow.log_image(image, key=name.replace("/", "_"), step=step)

    def close(self) -> None:
        self.tracker.finish()


_KINDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


class Trackers:
    def __init__(self, names: list[str], out: Path, params: dict, resumed_from: int, warn) -> None:
        self.active, self.warn = {}, warn
        for name in names:
            try:
                self.active[name] = _KINDS[name](out, params, resumed_from)
            except Exception as e:  # any failure to start: the run goes on without this tracker
                first = " ".join(str(e).split())[:200] or e.__class__.__name__
                warn(f"train.report_to: {name} could not start ({e.__class__.__name__}: {first}); "
                     f"training goes on without it")

    def _each(self, call: str, *args) -> None:
        for name, tracker in list(self.active.items()):
            try:
                getattr(tracker, call)(*args)
            except Exception as e:  # a tracker that breaks mid-run is dropped, never the run
                del self.active[name]
                self.warn(f"train.report_to: {name} failed ({e.__class__.__name__}: {' '.join(str(e).split())[:200]}); "
                          f"training goes on without it")

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._each("scalars", values, step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self._each("image", name, image, step)

    def close(self) -> None:
        self._each("close")


def flat_params(config: dict, prefix: str = "") -> dict:
    """A nested config as {"data.batch_size": 8, ...}, values as trackers take them."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, (bool, int, float, str)) or v is None else json.dumps(v)
    return out
