"""Next-frame predictive ("active inference") objective with precision-weighted prediction error.

    vssl pretrain recipes/pretrain/predictive.yaml         # objective.name: predictive

The encoder sees the context: all but the last `predict_steps` tubelet time steps of the clip.
A causal temporal predictor (a transformer whose tokens attend only to tokens at the same or
earlier time steps) reads the context tokens followed by one query token per future position and
predicts, for each future token, (a) the pixels of its region (per-patch normalised, as VideoMAE
targets; with objective.target=frame_diff its frame differences x_t - x_(t-1), the change to
come; with motion_energy their magnitude), (b) optionally the latent of an EMA target encoder
that saw the whole clip, and (c) a log precision s. The loss is the Gaussian negative
log-likelihood 0.5*exp(s)*err^2 - 0.5*s (common.gaussian_nll) with err^2 the token's mean squared
error, so the model learns where the future is predictable. precision*|error| per token is the
surprise map (logged as a picture).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import ObjectiveConfig
from pipeline.models.base import VideoBackbone
from pipeline.objectives.common import (PretrainObjective, display_stats, ema_copy, gaussian_nll, heat_rgb,
                                        init_weights, latent_targets, linear_flops, log_precision, normalize_patches,
                                        patchify, picture_rows, sincos_pos_embed, target_video, to_uint8_frames,
                                        transformer, transformer_flops, unpatchify, upsample_tokens)


def causal_time_mask(times: Tensor) -> Tensor:
    """Additive attention mask (L, L): token i may attend to token j iff time[j] <= time[i]."""
    allowed = times[None, :] <= times[:, None]
    return torch.zeros(allowed.shape, dtype=torch.float32, device=times.device).masked_fill(~allowed, float("-inf"))


class NextFramePredictive(PretrainObjective):
    def __init__(self, encoder: VideoBackbone, cfg: ObjectiveConfig, **clip) -> None:
        """clip: channels, mean, std (PretrainObjective's)."""
        super().__init__(encoder, cfg, **clip)
        encoder.freeze_unused(masked=False, pooled=False)  # the context is encoded unmasked
        d, width = cfg.decoder_dim, encoder.num_features
        self.proj = nn.Linear(width, d)
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        self.predictor = transformer(d, cfg.decoder_depth, cfg.decoder_heads)
        self.norm = nn.LayerNorm(d)
        stride = encoder.output_stride
        self.pixel_head = nn.Linear(d, stride[0] * stride[1] * stride[2] * self.channels)
        self.pixel_precision = nn.Linear(d, 1)
        modules = [self.proj, self.predictor, self.norm, self.pixel_head, self.pixel_precision]
        if cfg.latent_target:
            self.target_encoder = ema_copy(encoder)
            self.latent_head = nn.Linear(d, width)
            self.latent_precision = nn.Linear(d, 1)
            modules += [self.latent_head, self.latent_precision]
        init_weights(nn.ModuleList(modules))
        for head in (self.pixel_precision, getattr(self, "latent_precision", None)):
            if head is not None:
                nn.init.zeros_(head.weight)  # start at precision 1 everywhere
        nn.init.trunc_normal_(self.query, std=0.02)

    def split(self, video: Tensor) -> tuple[Tensor, Tensor]:
        cut = video.shape[2] - self.cfg.predict_steps * self.encoder.output_stride[0]
        if cut < self.encoder.patch_size[0]:
            raise ValueError(f"objective.predict_steps={self.cfg.predict_steps}: clip of {video.shape[2]} frames "
                             f"leaves no context frames")
        return video[:, :, :cut], video[:, :, cut:]

    def flops(self, batch: dict) -> tuple[int, int]:
        """Forward FLOPs of one clip: (modules that learn, the no-grad EMA target encoder).
        Analytic: the encoder's count on the context frames, the predictor as transformer_flops
        on context + query tokens (the causal mask does not save FLOPs), and the heads."""
        t, h, w = batch["video"].shape[2:]
        enc, width, d, k = self.encoder, self.encoder.num_features, self.cfg.decoder_dim, self.cfg.predict_steps
        stride = enc.output_stride
        context = t - k * stride[0]
        n_ctx = (context // stride[0]) * (h // stride[1]) * (w // stride[2])
        queries = k * (h // stride[1]) * (w // stride[2])
        per_query = self.pixel_head.out_features + 1 + ((width + 1) if self.cfg.latent_target else 0)
        trained = (enc.flops(context, h, w) + linear_flops(n_ctx, width, d)
                   + transformer_flops(n_ctx + queries, d, self.cfg.decoder_depth) + linear_flops(queries, d, per_query))
        return trained, enc.flops(t, h, w) if self.cfg.latent_target else 0

    def future_target(self, video: Tensor) -> Tensor:
        """The future part of what is predicted (objective.target): frames, frame differences or
        their magnitude."""
        return self.split(target_video(video, self.cfg.target))[1]

    def predict(self, video: Tensor) -> dict[str, Tensor]:
        context, _ = self.split(video)
        future = self.future_target(video)
        ctx = self.encoder(context)
        t, h, w = ctx.grid
        k = self.cfg.predict_steps
        d = self.cfg.decoder_dim
        grid_all = (t + k, h, w)
        pos = sincos_pos_embed(grid_all, d, ctx.tokens.device).to(ctx.tokens.dtype)
        b = video.shape[0]
        n_ctx = t * h * w
        seq = torch.cat([self.proj(ctx.tokens) + pos[:, :n_ctx],
                         self.query.expand(b, k * h * w, -1) + pos[:, n_ctx:]], dim=1)
        times = torch.arange(t + k, device=video.device).repeat_interleave(h * w)
        # is_causal=False: the mask is block-causal, and torch would otherwise compare it with a
        # causal one on the host (a sync) to find out
        out = self.norm(self.predictor(seq, mask=causal_time_mask(times), is_causal=False)[:, n_ctx:])
        future_grid = (k, h, w)
        pixels = unpatchify(self.pixel_head(out), self.encoder.output_stride, future_grid, self.channels)
        pred = patchify(pixels, self.encoder.output_stride)
        target = patchify(future, self.encoder.output_stride)
        target = normalize_patches(target, self.channels)[0] if self.cfg.norm_pix_loss else target
        err2 = ((pred.float() - target.float()) ** 2).mean(-1)
        result = {"pred": pred, "err2": err2, "log_precision": log_precision(self.pixel_precision, out, self.cfg),
                  "grid": torch.tensor(future_grid)}
        if self.cfg.latent_target:
            latent = latent_targets(self.target_encoder, video, self.cfg.latent_norm)[:, n_ctx:]
            result["latent_err2"] = ((self.latent_head(out).float() - latent) ** 2).mean(-1)
            result["latent_log_precision"] = log_precision(self.latent_precision, out, self.cfg)
        return result

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        r = self.predict(batch["video"])
        pixel_nll = gaussian_nll(r["err2"], r["log_precision"].float()).mean()
        logs = {"pixel_mse": r["err2"].detach().mean(), "precision": r["log_precision"].detach().exp().mean()}
        loss = pixel_nll
        if self.cfg.latent_target:
            latent_nll = gaussian_nll(r["latent_err2"], r["latent_log_precision"].float()).mean()
            loss = loss + self.cfg.latent_weight * latent_nll
            logs["latent_mse"] = r["latent_err2"].detach().mean()
        return loss, logs

    @staticmethod
    def surprise(r: dict[str, Tensor]) -> Tensor:
        """precision x |error| per future token (B, K*h*w)."""
        return r["log_precision"].exp() * r["err2"].sqrt()

    @torch.no_grad()
    def visualize(self, batch: dict) -> np.ndarray:
        """Rows: the future frames (or differences), their prediction, the surprise map, for sample 0."""
        video = batch["video"][:1].float()
        was_training = self.training
        self.eval()
        r = self.predict(video)
        self.train(was_training)
        future = self.future_target(video)
        stride, c = self.encoder.output_stride, self.channels
        grid = tuple(int(g) for g in r["grid"])
        pred = r["pred"]
        if self.cfg.norm_pix_loss:
            _, mean, std = normalize_patches(patchify(future, stride), c)
            pred = (pred.reshape(*mean.shape[:2], -1, c) * std + mean).reshape(pred.shape)
        pred_frames = unpatchify(pred, stride, grid, c)
        heat = upsample_tokens(self.surprise(r)[0], grid, tuple(future.shape[2:]))
        mean, std = display_stats(self.cfg.target, self.mean, self.std)
        rows = [to_uint8_frames(future[0], mean, std), to_uint8_frames(pred_frames[0], mean, std),
                heat_rgb(heat)]
        return picture_rows(rows)
