"""`python -m benchmarks model [--quick]`: speed, memory and FLOPs of the video backbones.

Metrics (all measured in this run; times are the best of interleaved repeats; on CPU with one
intra-op thread and that thread's CPU time, so that other processes on a shared machine do not
skew the ratios - wall time under contention varied by 2x between runs here):
- per backbone (registered names with `_small`; quick: `_tiny`), on the same clip batch:
  `<name>_ms` forward+backward time, `<name>_peak_mib` peak memory, `<name>_gflops` forward FLOPs
  per clip (model.flops: 2 per multiply-add).
- `masked_speedup_vit_s`: forward+backward time of joint ViT-S on the full clip / on the visible
  tokens of a 90% tube mask (goal >= 4).
- `step_time_vs_hf`, `peak_mem_vs_hf`: our joint ViT-S / transformers' VideoMAEModel with the same
  configuration, forward+backward (goals <= 0.9 and <= 1.0).
- `mfu_bf16_vit_b` (CUDA only): bf16 autocast forward+backward model FLOPs (3x forward) per second
  of ViT-B on 16x224x224, over the GPU's dense bf16 peak (goal >= 0.40). On CPU it is skipped
  and the report says so.
Peak memory: on CUDA torch.cuda.max_memory_allocated above the start; on CPU, which keeps no
allocator statistics, the peak of live bytes of the tensor storages created during the step,
tracked by a TorchDispatchMode holding weak references to them (parameters that exist before the
step are not counted; gradients and saved activations are).
Sizes: full 1 x 16x224x224; quick 2 x 8x112x112 (same code path).
"""

from __future__ import annotations

import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pipeline.data.masking import tube_mask
from pipeline.models import create_model, list_models
from pipeline.train.monitor import peak_flops



class LiveStorageBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created while active and still alive (CPU memory probe)."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage.data_ptr()
        if key in self._refs or storage.nbytes() == 0:
            return
        size = storage.nbytes()
        self._refs[key] = weakref.ref(storage, lambda _, key=key, size=size: self._free(key, size))
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int, size: int) -> None:
        self._refs.pop(key, None)
        self.current -= size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _step(model, video: torch.Tensor, mask: torch.Tensor | None = None, bf16: bool = False) -> None:
    with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=bf16):
        if hasattr(model, "token_grid"):
            out = model(video, mask=mask).tokens
        else:  # transformers VideoMAEModel takes (B, T, C, H, W)
            out = model(pixel_values=video, bool_masked_pos=mask).last_hidden_state
    out.float().mean().backward()


def best_times(runs: dict[str, tuple], repeats: int, bf16: bool = False) -> dict[str, float]:
    """Best forward+backward seconds per entry; entries alternate so load drift hits all alike."""
    best = {name: float("inf") for name in runs}
    for i in range(repeats + 1):
        for name, (model, video, mask) in runs.items():
            clock = time.perf_counter if video.is_cuda else time.thread_time
            model.zero_grad(set_to_none=True)
            _sync(video.device)
            start = clock()
            _step(model, video, mask, bf16)
            _sync(video.device)
            if i:  # the first round warms up
                best[name] = min(best[name], clock() - start)
    return best


def peak_bytes(model, video: torch.Tensor, mask: torch.Tensor | None = None) -> int:
    model.zero_grad(set_to_none=True)
    if video.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        _step(model, video, mask)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    with LiveStorageBytes() as probe:
        _step(model, video, mask)
    return probe.peak


def hf_videomae_like(model) -> torch.nn.Module:
    """transformers' VideoMAEModel with our model's configuration (a peer measured in the same run)."""
    from transformers import VideoMAEConfig, VideoMAEModel

    c = model.config
    config = VideoMAEConfig(image_size=c["img_size"], patch_size=c["patch_size"][1], num_frames=c["num_frames"],
                            tubelet_size=c["patch_size"][0], hidden_size=c["embed_dim"],
                            num_hidden_layers=c["depth"], num_attention_heads=c["num_heads"],
                            intermediate_size=round(c["embed_dim"] * c["mlp_ratio"]),
                            layer_norm_eps=c["norm_eps"], use_mean_pooling=True)
    return VideoMAEModel(config)


def mfu_vit_b(device: torch.device, quick: bool) -> tuple[float, str]:
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    if peak is None:
        return float("nan"), f"mfu_bf16_vit_b: no bf16 peak known for {name}"
    model = create_model("vit_base_joint").to(device)
    batch = 4 if quick else 16
    video = torch.randn(batch, 3, 16, 224, 224, device=device)
    seconds = best_times({"vit_b": (model, video, None)}, repeats=3 if quick else 10, bf16=True)["vit_b"]
    achieved = 3 * model.flops(16, 224, 224) * batch / seconds
    return achieved / peak, f"mfu_bf16_vit_b: {achieved / 1e12:.0f} TFLOP/s of {peak / 1e12:.0f} on {name}"


def run(quick: bool) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _measure(device, quick)
    finally:
        torch.set_num_threads(threads)


def _measure(device: torch.device, quick: bool) -> dict:
    frames, size, batch = (8, 112, 2) if quick else (16, 224, 1)
    repeats = 2 if quick else 3
    video = torch.randn(batch, 3, frames, size, size, device=device)
    metrics: dict[str, float] = {}

    for name in list_models("_tiny" if quick else "_small"):
        model = create_model(name, num_frames=frames, img_size=size).to(device)
        seconds = best_times({name: (model, video, None)}, repeats)[name]
        metrics[f"{name}_ms"] = round(seconds * 1e3, 1)
        metrics[f"{name}_peak_mib"] = round(peak_bytes(model, video) / 2**20, 1)
        metrics[f"{name}_gflops"] = round(model.flops(frames, size, size) / 1e9, 2)
        print(f"{name}: {metrics[f'{name}_ms']} ms fwd+bwd, {metrics[f'{name}_peak_mib']} MiB peak, "
              f"{metrics[f'{name}_gflops']} GFLOPs fwd per clip", flush=True)
        del model

    ours = create_model("vit_small_joint", num_frames=frames, img_size=size, final_norm="none").to(device)
    hf = hf_videomae_like(ours).to(device)
    mask = tube_mask(batch, ours.base_grid, 0.9).to(device)
    hf_video = video.transpose(1, 2).contiguous()
    times = best_times({"full": (ours, video, None), "masked": (ours, video, mask),
                        "hf": (hf, hf_video, None)}, repeats + 3)
    metrics["masked_speedup_vit_s"] = round(times["full"] / times["masked"], 2)
    metrics["step_time_vs_hf"] = round(times["full"] / times["hf"], 3)
    ours_peak, hf_peak = peak_bytes(ours, video), peak_bytes(hf, hf_video)
    metrics["peak_mem_vs_hf"] = round(ours_peak / hf_peak, 3)
    print(f"vit_small_joint vs transformers VideoMAEModel: {times['full'] * 1e3:.0f} vs {times['hf'] * 1e3:.0f} ms, "
          f"{ours_peak / 2**20:.0f} vs {hf_peak / 2**20:.0f} MiB; 90% tube-masked: {times['masked'] * 1e3:.0f} ms",
          flush=True)

    goals = {"masked_speedup_vit_s": ">= 4", "step_time_vs_hf": "<= 0.9", "peak_mem_vs_hf": "<= 1.0"}
    if device.type == "cuda":
        metrics["mfu_bf16_vit_b"], note = mfu_vit_b(device, quick)
        goals["mfu_bf16_vit_b"] = ">= 0.40"
    else:
        note = "mfu_bf16_vit_b: skipped (needs a CUDA GPU)"
    print(note, flush=True)
    return {"metrics": metrics, "goals": goals}
