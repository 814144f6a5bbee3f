"""VideoMAE: reconstruct the pixels of hidden tubelets from the visible ones.

    vssl pretrain recipes/pretrain/quickstart.yaml        # objective.name: videomae

The encoder sees the clip under a (tube) mask. A narrow decoder (objective.decoder_*) receives
the encoder's tokens plus a learned mask token at every hidden position, with fixed sin-cos
positions, and predicts each tubelet's pixels; the loss is the MSE over hidden tubelets of
per-patch normalised pixels (norm_pix_loss). With objective.target=frame_diff the tubelets to
reconstruct are frame differences x_t - x_(t-1) instead of pixels (the first frame repeats the
second's difference), as MotionMAE and MME reconstruct motion: with appearance taken out of the
target, what the encoder must capture is how things move. objective.target=motion_energy
reconstructs |x_t - x_(t-1)| (use it with norm_pix_loss: false): the sign of a moving textured
edge depends on the texture, which a hidden tube never shows, but where and how much the clip
changes follows from the motion seen elsewhere.

With objective.precision_weighted a head also predicts a log precision s per reconstructed token
and the loss is the Gaussian NLL 0.5*exp(s)*err^2 - 0.5*s of the token's mean squared error, as in
the predictive objective: with norm_pix_loss off, s learns how much a hidden tube holds that the
visible ones predict (on moving content, little).

With objective.latent_target the decoder also regresses, at every reconstructed position, the
final token of an EMA copy of the encoder that saw the unmasked clip (as data2vec and V-JEPA do),
normalised per objective.latent_norm (common.latent_targets); the loss adds latent_weight x that
MSE. Pixels alone teach a small encoder little on a short budget; the latent target gives it a
target that is itself a representation. objective.latent_norm picks how the targets are
normalised: per token (layer norm) or per channel over the clip (instance norm, data2vec's choice),
which leaves more to predict (docs/EXPERIMENTS.md, "Measurements behind design choices").

Backbones with mask_mode "visible_only" (ViT family) encode only the visible tokens; decoder
masking (objective.decoder_mask_ratio > 0, VideoMAE v2) then reconstructs only part of the hidden
tokens, those outside a running-cell pattern first, so the decoder's cost falls with the ratio.
Backbones with "mask_token" (MViT, Swin) return a coarser final grid: each final token predicts
every pixel of its output_stride region, and the loss is taken on the hidden tubelets inside it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import ObjectiveConfig
from pipeline.host import read_on_host
from pipeline.models.base import VideoBackbone
from pipeline.objectives.common import (PretrainObjective, display_stats, ema_copy, gaussian_nll, init_weights,
                                        latent_targets, linear_flops, log_precision, normalize_patches,
                                        patchify, picture_rows, sincos_pos_embed, target_video,
                                        to_uint8_frames, transformer, transformer_flops, unpatchify)
from pipeline.data.masking import running_cell_from_phase
from pipeline.objectives.guided_masking import guided_tube_mask


class VideoMAE(PretrainObjective):
    def __init__(self, encoder: VideoBackbone, cfg: ObjectiveConfig, **clip) -> None:
        """clip: channels, mean, std (PretrainObjective's)."""
        super().__init__(encoder, cfg, **clip)
        encoder.freeze_unused(masked=True, pooled=False)
        d = cfg.decoder_dim
        self.proj = nn.Linear(encoder.num_features, d)
        # the decoder's query at hidden positions; a mask-token encoder's output already has them
        visible_only = encoder.mask_mode == "visible_only"
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d)) if visible_only else None
        self.decoder = transformer(d, cfg.decoder_depth, cfg.decoder_heads)
        self.norm = nn.LayerNorm(d)
        stride = encoder.output_stride
        self.head = nn.Linear(d, stride[0] * stride[1] * stride[2] * self.channels)
        modules = [self.proj, self.decoder, self.norm, self.head]
        if cfg.precision_weighted:
            self.precision_head = nn.Linear(d, 1)
            modules.append(self.precision_head)
        if cfg.decoder_mask_ratio > 0 and not visible_only:
            raise ValueError(f"objective.decoder_mask_ratio: decoder masking needs a visible-only encoder; "
                             f"{encoder.config.get('name', type(encoder).__name__)} decodes its full final grid")
        if cfg.latent_target:
            if tuple(encoder.output_stride) != tuple(encoder.patch_size):
                raise ValueError(f"objective.latent_target: needs a backbone whose final grid is its embedding grid "
                                 f"(output_stride {tuple(encoder.output_stride)} != patch_size "
                                 f"{tuple(encoder.patch_size)})")
            self.target_encoder = ema_copy(encoder)
            self.latent_head = nn.Linear(d, encoder.num_features)
            modules.append(self.latent_head)
        init_weights(nn.ModuleList(modules))
        if cfg.precision_weighted:
            nn.init.zeros_(self.precision_head.weight)  # start at precision 1 everywhere
        if visible_only:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def targets(self, video: Tensor) -> Tensor:
        target = patchify(target_video(video, self.cfg.target), self.encoder.patch_size)
        return normalize_patches(target, self.channels)[0] if self.cfg.norm_pix_loss else target

    def _decode_visible_only(self, tokens: Tensor, mask: Tensor, grid: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
        """Decoder outputs (B, K, d) for the K reconstructed positions, and their grid indices (B, K)."""
        b, n = mask.shape
        x = self.proj(tokens)
        n_vis = x.shape[1]
        hidden_ids = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, n_vis:]  # (B, n_hidden)
        if self.cfg.decoder_mask_ratio > 0:
            keep = max(1, round((1 - self.cfg.decoder_mask_ratio) * hidden_ids.shape[1]))
            # the phases come from the device's global RNG, which checkpoints save and restore
            phase = torch.randint(0, 4, (b,), device=mask.device)
            cell = running_cell_from_phase(phase, grid, self.cfg.decoder_mask_ratio)
            # hidden positions the running cell leaves visible come first; ties in grid order
            order = torch.argsort(cell.gather(1, hidden_ids).to(torch.int8), dim=1, stable=True)[:, :keep]
            hidden_ids = hidden_ids.gather(1, torch.sort(order, dim=1).values)
        pos = sincos_pos_embed(grid, x.shape[-1], x.device).to(x.dtype).expand(b, -1, -1)
        vis_ids = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n_vis]
        gather = lambda ids: pos.gather(1, ids[..., None].expand(-1, -1, pos.shape[-1]))  # noqa: E731
        queries = self.mask_token.expand(b, hidden_ids.shape[1], -1) + gather(hidden_ids)
        seq = torch.cat([x + gather(vis_ids), queries], dim=1)
        return self.norm(self.decoder(seq)[:, n_vis:]), hidden_ids

    def _decode_mask_token(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """Decoder outputs (B, n, d) on the (possibly coarser) final grid."""
        x = self.proj(tokens) + sincos_pos_embed(grid, self.cfg.decoder_dim, tokens.device).to(tokens.dtype)
        return self.norm(self.decoder(x))

    def _pixels_on_embedding_grid(self, out: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """Predictions (B, N, P) on the embedding grid from decoder outputs on the final grid: each
        final token predicts every pixel of its output_stride region."""
        full = unpatchify(self.head(out), self.encoder.output_stride, grid, self.channels)
        return patchify(full, self.encoder.patch_size)

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        video, mask = batch["video"], batch["mask"]
        if self.cfg.guided_masking == "motion":
            grid = self.encoder.token_grid(*video.shape[2:])
            frames = mask.view(mask.shape[0], grid[0], -1)
            not_tube, visible = read_on_host(torch.stack([(frames != frames[:, :1]).any().long(), (~mask[0]).sum()]))
            if not_tube:
                raise ValueError("objective.guided_masking=motion: needs data.mask_type=tube")
            num_visible = visible // grid[0]
            mask = guided_tube_mask(video, self.encoder.patch_size, num_visible, self.cfg.guide_strength)
        loss, logs, _ = self.reconstruct(video, mask)
        return loss, logs

    def flops(self, batch: dict) -> tuple[int, int]:
        """Forward FLOPs of one clip of `batch` (its first mask row): (modules that learn, the
        no-grad EMA target encoder). Analytic: the encoder's own count (visible tokens only for
        visible-only encoders), the decoder as transformer_flops on its sequence, and its heads."""
        video, mask = batch["video"], batch["mask"][:1]
        t, h, w = video.shape[2:]
        enc, width, d = self.encoder, self.encoder.num_features, self.cfg.decoder_dim
        per_token = self.head.out_features + (1 if self.cfg.precision_weighted else 0) \
            + (width if self.cfg.latent_target else 0)
        if enc.mask_mode == "visible_only":
            encoder = enc.flops(t, h, w, mask=mask)
            n_hidden = int(mask.sum())
            n_visible = mask.shape[1] - n_hidden
            decoded = n_hidden if self.cfg.decoder_mask_ratio <= 0 else \
                max(1, round((1 - self.cfg.decoder_mask_ratio) * n_hidden))
            inputs, sequence = n_visible, n_visible + decoded
        else:
            encoder = enc.flops(t, h, w)
            inputs = sequence = decoded = math.prod(g // s for g, s in zip((t, h, w), enc.output_stride))
        trained = (encoder + linear_flops(inputs, width, d) + transformer_flops(sequence, d, self.cfg.decoder_depth)
                   + linear_flops(decoded, d, per_token))
        return trained, enc.flops(t, h, w) if self.cfg.latent_target else 0

    def reconstruct(self, video: Tensor, mask: Tensor) -> tuple[Tensor, dict, Tensor]:
        """Loss, logs and the full prediction on the grid (B, N, P) (zeros where not predicted).

        With objective.precision_weighted the pixel term is each token's Gaussian NLL under its
        learned precision instead of its MSE. With objective.latent_target the decoder also
        regresses, at the same hidden positions, the EMA target encoder's normalised tokens of the
        unmasked clip (data2vec-style); the loss adds latent_weight x their MSE."""
        grid = self.encoder.token_grid(*video.shape[2:])
        out = self.encoder(video, mask)
        target = self.targets(video)
        latent = latent_targets(self.target_encoder, video, self.cfg.latent_norm) if self.cfg.latent_target else None
        if self.encoder.mask_mode == "visible_only":
            dec, ids = self._decode_visible_only(out.tokens, mask, grid)
            pred = self.head(dec)
            take = lambda x: x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
            err2 = ((pred.float() - take(target).float()) ** 2).mean(-1)  # (B, K)
            weight = torch.ones_like(err2)
            full = torch.zeros_like(target).scatter(1, ids[..., None].expand_as(pred), pred.to(target.dtype))
            latent_err2 = None if latent is None else ((self.latent_head(dec).float() - take(latent)) ** 2).mean(-1)
        else:
            dec = self._decode_mask_token(out.tokens, out.grid)
            full = self._pixels_on_embedding_grid(dec, out.grid)
            weight = mask.float()
            err2 = ((full.float() - target.float()) ** 2).mean(-1)  # (B, N)
            latent_err2 = None if latent is None else ((self.latent_head(dec).float() - latent) ** 2).mean(-1)
        log_prec = None  # of each decoded token: (B, K) visible-only, (B, N) on the final grid
        if self.cfg.precision_weighted:
            log_prec = log_precision(self.precision_head, dec, self.cfg).float()
            if tuple(out.grid) != tuple(grid):  # coarser final grid: each final token's over its output_stride region
                per_final = log_prec.view(-1, 1, *out.grid)
                log_prec = torch.nn.functional.interpolate(per_final, size=grid, mode="nearest").flatten(1)
        mean = lambda x: (x * weight).sum() / weight.sum().clamp(min=1)  # noqa: E731  over reconstructed tokens
        loss = mean(err2 if log_prec is None else gaussian_nll(err2, log_prec))
        logs = {"mask_ratio": mask.float().mean()}  # tensors: read on the host at logging steps only
        if log_prec is not None or latent_err2 is not None:  # the loss is then more than the pixel MSE
            logs["pixel_mse"] = mean(err2.detach())
        if log_prec is not None:
            logs["precision"] = mean(log_prec.detach().exp())
        if latent_err2 is not None:
            latent_mse = mean(latent_err2)
            logs["latent_mse"] = latent_mse.detach()
            loss = loss + self.cfg.latent_weight * latent_mse
        return loss, logs, full

    @torch.no_grad()
    def visualize(self, batch: dict) -> np.ndarray:
        """Rows: input, masked target, reconstruction (hidden patches filled in), for sample 0.

        With target=frame_diff the last two rows show frame differences, mid-grey meaning no change."""
        video, mask = batch["video"][:1].float(), batch["mask"][:1]
        was_training = self.training
        self.eval()
        _, _, pred = self.reconstruct(video, mask)
        self.train(was_training)
        patch, c = self.encoder.patch_size, self.channels
        grid = self.encoder.token_grid(*video.shape[2:])
        raw = patchify(target_video(video, self.cfg.target), patch)
        if self.cfg.norm_pix_loss:
            _, mean, std = normalize_patches(raw, c)
            pred = (pred.reshape(*mean.shape[:2], -1, c) * std + mean).reshape(raw.shape)
        m = mask[..., None].to(raw.dtype)
        masked = unpatchify(raw * (1 - m), patch, grid, c)
        recon = unpatchify(raw * (1 - m) + pred.to(raw.dtype) * m, patch, grid, c)
        mean, std = display_stats(self.cfg.target, self.mean, self.std)
        rows = [to_uint8_frames(video[0], self.mean, self.std)] + [to_uint8_frames(v[0], mean, std)
                                                                    for v in (masked, recon)]
        return picture_rows(rows)
