"""Configurable guided-diffusion UNet eps_theta(x_t, t) (Dhariwal & Nichol 2021, "ADM").

Structure and parameter names ported from openai/guided-diffusion
(https://github.com/openai/guided-diffusion, commit 22e0df8, ``guided_diffusion/unet.py``:
``UNetModel``, ``ResBlock``, ``AttentionBlock``, ``QKVAttentionLegacy``, ``timestep_embedding``),
MIT License, Copyright (c) 2021 OpenAI. Rewritten with einops and
``F.scaled_dot_product_attention``; class conditioning, fp16 and gradient checkpointing dropped.
``state_dict`` keys and shapes equal the official ones, so official checkpoints load with
``strict=True``. The AnoDDPM and DDAD UNets are the same network with
``use_scale_shift_norm=False``, ``learn_sigma=False`` and ``flip_sin_to_cos=False`` (their
checkpoints use other key names and need a key map).
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# Reference configurations (keyword arguments of ``UNet``).
UNET_PRESETS: dict[str, dict] = {
    # 256x256_diffusion_uncond.pt (guided-diffusion README): 552,814,086 parameters.
    "guided_diffusion_256_uncond": dict(
        model_channels=256,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_head_channels=64,
        use_scale_shift_norm=True,
        learn_sigma=True,
        flip_sin_to_cos=True,
    ),
    # DDAD (Mousakhan et al. 2023) at 256 px: 32,952,707 parameters.
    "ddad_256": dict(model_channels=64, channel_mult=(1, 1, 2, 2, 4, 4), num_heads=4),
    # AnoDDPM (Wyatt et al. 2022) at 256 px, 3 channels: 131,654,403 parameters.
    "anoddpm_256": dict(model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_heads=2),
}


def timestep_embedding(t: Tensor, dim: int, flip_sin_to_cos: bool = True) -> Tensor:
    """Sinusoidal timestep embedding (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, app. B).

    Frequencies ``exp(-ln(10000) i / (dim / 2))``, ``i < dim / 2``.

    Args:
        t: ``(B,)`` timesteps (long indices or floats).
        dim: Even embedding width.
        flip_sin_to_cos: ``[cos, sin]`` order (guided-diffusion) if True, else ``[sin, cos]``
            (AnoDDPM / DDAD).

    Returns:
        ``(B, dim)`` float32 embedding.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    parts = (args.cos(), args.sin()) if flip_sin_to_cos else (args.sin(), args.cos())
    return torch.cat(parts, dim=-1)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer's parameters (the last layer of each residual branch)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with timestep conditioning and optional BigGAN-style up/down-sampling.

    Args:
        in_channels: Input width.
        emb_channels: Timestep-embedding width.
        out_channels: Output width (1x1 skip conv if different from ``in_channels``).
        dropout: Dropout before the last conv.
        norm_num_groups: GroupNorm groups.
        use_scale_shift_norm: FiLM the second norm, ``GN(h) (1 + scale) + shift`` (ADM); else
            add the embedding as a per-channel bias before it (DDPM).
        up: Nearest-neighbour 2x upsampling inside the block.
        down: 2x2 average pooling inside the block.
    """

    def __init__(
        self,
        in_channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float,
        norm_num_groups: int,
        use_scale_shift_norm: bool,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(
            nn.GroupNorm(norm_num_groups, in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(norm_num_groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Map ``(B, in, H, W)`` and ``emb`` ``(B, E)`` to ``(B, out, H', W')``."""
        h = self._resample(self.in_layers[:-1](x))
        h = self.in_layers[-1](h)
        x = self._resample(x)
        emb_out = rearrange(self.emb_layers(emb), "b c -> b c 1 1")
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions with a residual connection.

    Head split follows guided-diffusion's ``QKVAttentionLegacy`` (the layout of its released
    checkpoints): the ``qkv`` output channels are ordered ``(heads, [q, k, v], head_dim)``.
    Scores are ``softmax(q^T k / sqrt(head_dim))``, computed by ``F.scaled_dot_product_attention``.

    Args:
        channels: Width C (divisible by ``num_heads``).
        num_heads: Number of heads.
        norm_num_groups: GroupNorm groups.
    """

    def __init__(self, channels: int, num_heads: int, norm_num_groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_num_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, C, H, W)`` to ``(B, C, H, W)``."""
        x_flat = rearrange(x, "b c h w -> b c (h w)")
        qkv = self.qkv(self.norm(x_flat))
        q, k, v = rearrange(
            qkv, "b (heads three d) n -> three b heads n d", heads=self.num_heads, three=3
        ).contiguous()  # strided q, k, v send SDPA to its slower math kernel on the CPU
        out = rearrange(F.scaled_dot_product_attention(q, k, v), "b heads n d -> b (heads d) n")
        return rearrange(x_flat + self.proj_out(out), "b c (h w) -> b c h w", h=x.shape[-2])


class Downsample(nn.Module):
    """Strided 3x3 conv (used when ``resblock_updown=False``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, C, H, W)`` to ``(B, C, H / 2, W / 2)``."""
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling then 3x3 conv (used when ``resblock_updown=False``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, C, H, W)`` to ``(B, C, 2H, 2W)``."""
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that also passes the timestep embedding to its ``ResBlock``s."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Apply the layers in order."""
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def checked_image_size(image_size: int | Sequence[int], levels: int) -> tuple[int, int]:
    """``(H, W)`` of an ``image_size`` that a UNet with ``levels`` levels can take.

    Raises:
        ValueError: not a positive size or ``[H, W]``, or a side that does not divide by
            ``2 ** (levels - 1)`` (the skip connections would not match), with the nearest
            sizes that do.
    """
    size = (image_size,) * 2 if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"dataset.image_size={image_size!r}: expected a positive size S or [H, W]")
    factor = 2 ** (levels - 1)
    for s in size:
        if s % factor:
            below, above = s // factor * factor, (s // factor + 1) * factor
            raise ValueError(
                f"dataset.image_size={image_size!r}: the UNet (model.unet.channel_mult, "
                f"{levels} levels) halves its input {levels - 1} times, so every side must be "
                f"divisible by {factor}; {s} is not (use {below or factor} or {above})"
            )
    return size


class UNet(nn.Module):
    """Guided-diffusion UNet predicting the noise, ``forward(x_t, t) -> eps``.

    Encoder: input conv, then per level ``num_res_blocks`` ResBlocks (+ attention at the chosen
    resolutions) and, except at the last level, a downsampling block; middle: ResBlock,
    attention, ResBlock; decoder: per level ``num_res_blocks + 1`` ResBlocks on
    ``concat(h, skip)`` (+ attention) and an upsampling block; head: GroupNorm, SiLU, conv.
    Every width and the GroupNorm group count are arguments, so tests can shrink them.

    Args:
        in_channels: Image channels C.
        out_channels: Predicted-noise channels (usually C).
        model_channels: Base width (time-embedding width is ``4 * model_channels``).
        channel_mult: Width multiplier per level (floats allowed, e.g. 0.5 at 512 px).
        num_res_blocks: ResBlocks per encoder level.
        attention_resolutions: **Feature-map sizes** in pixels (e.g. ``(32, 16, 8)``) at which
            attention follows each ResBlock; converted to downsample factors
            ``image_size // r`` as guided-diffusion's ``create_model`` does.
        num_heads: Attention heads when ``num_head_channels == -1``.
        num_head_channels: Channels per head (overrides ``num_heads``), or -1.
        dropout: Dropout in the ResBlocks.
        norm_num_groups: GroupNorm groups (32 in all papers).
        use_scale_shift_norm: FiLM-style timestep conditioning (ADM) instead of a bias.
        resblock_updown: Resample with ResBlocks (BigGAN) instead of conv layers.
        learn_sigma: Add ``out_channels`` outputs for the learned variance (``forward_raw``).
        image_size: Input size, ``S`` or ``(H, W)`` (``dataset.image_size``): each side must
            divide by ``2 ** (len(channel_mult) - 1)``; the shorter side places the attention.
        flip_sin_to_cos: Timestep-embedding order ``[cos, sin]`` (guided-diffusion) vs
            ``[sin, cos]`` (AnoDDPM, DDAD).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        model_channels: int = 64,
        channel_mult: Sequence[float] = (1, 1, 2, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (32, 16, 8),
        num_heads: int = 4,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = True,
        learn_sigma: bool = False,
        image_size: int | Sequence[int] = 256,
        flip_sin_to_cos: bool = False,
    ) -> None:
        super().__init__()
        self.levels = len(channel_mult)  # the input halves levels - 1 times
        side = min(checked_image_size(image_size, self.levels))
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self._resblock_kwargs = dict(
            emb_channels=4 * model_channels,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            use_scale_shift_norm=use_scale_shift_norm,
        )
        self._num_heads, self._num_head_channels = num_heads, num_head_channels
        self._norm_num_groups = norm_num_groups
        self._resblock_updown = resblock_updown
        widths = [int(mult * model_channels) for mult in channel_mult]
        attention_ds = {side // r for r in attention_resolutions}
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, 4 * model_channels),
            nn.SiLU(),
            nn.Linear(4 * model_channels, 4 * model_channels),
        )
        skip_widths = self._build_encoder(in_channels, widths, num_res_blocks, attention_ds)
        ch = widths[-1]
        self.middle_block = TimestepEmbedSequential(
            self._resblock(ch, ch), self._attention(ch), self._resblock(ch, ch)
        )
        self._build_decoder(widths, num_res_blocks, attention_ds, skip_widths)
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, widths[0]),
            nn.SiLU(),
            _zero(nn.Conv2d(widths[0], out_channels * (2 if learn_sigma else 1), 3, padding=1)),
        )

    def _resblock(self, in_ch: int, out_ch: int, up: bool = False, down: bool = False) -> ResBlock:
        return ResBlock(in_ch, out_channels=out_ch, up=up, down=down, **self._resblock_kwargs)

    def _attention(self, ch: int) -> AttentionBlock:
        if self._num_head_channels == -1:
            return AttentionBlock(ch, self._num_heads, self._norm_num_groups)
        if ch % self._num_head_channels:
            raise ValueError(f"width {ch} not divisible by num_head_channels")
        return AttentionBlock(ch, ch // self._num_head_channels, self._norm_num_groups)

    def _build_encoder(
        self, in_channels: int, widths: list[int], num_res_blocks: int, attention_ds: set[int]
    ) -> list[int]:
        """Create ``input_blocks``; return the width of every skip connection."""
        ch, ds = widths[0], 1
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        skip_widths = [ch]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [self._resblock(ch, width)]
                ch = width
                if ds in attention_ds:
                    layers.append(self._attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_widths.append(ch)
            if level != len(widths) - 1:
                down = (
                    self._resblock(ch, ch, down=True) if self._resblock_updown else Downsample(ch)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_widths.append(ch)
                ds *= 2
        return skip_widths

    def _build_decoder(
        self, widths: list[int], num_res_blocks: int, attention_ds: set[int], skip_widths: list[int]
    ) -> None:
        """Create ``output_blocks``, consuming ``skip_widths`` from the end."""
        ch, ds = widths[-1], 2 ** (len(widths) - 1)
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [self._resblock(ch + skip_widths.pop(), widths[level])]
                ch = widths[level]
                if ds in attention_ds:
                    layers.append(self._attention(ch))
                if level and i == num_res_blocks:
                    up = self._resblock(ch, ch, up=True) if self._resblock_updown else Upsample(ch)
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

    def forward_raw(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Full network output.

        Args:
            x_t: ``(B, C, H, W)`` noisy images, H and W divisible by ``2 ** (levels - 1)``.
            t: ``(B,)`` timestep indices ``0 .. T-1``.

        Returns:
            ``(B, out_channels, H, W)``, or ``(B, 2 * out_channels, H, W)`` if ``learn_sigma``
            (eps, then the variance interpolation ``v`` of Nichol & Dhariwal 2021, eq. 15).
        """
        emb = self.time_embed(timestep_embedding(t, self.model_channels, self.flip_sin_to_cos))
        skips = []
        h = x_t
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Predict the noise eps_theta(x_t, t) (Ho et al. 2020, eq. 11).

        Args:
            x_t: ``(B, C, H, W)`` noisy images.
            t: ``(B,)`` timestep indices ``0 .. T-1``.

        Returns:
            ``(B, out_channels, H, W)`` eps (the variance channels, if any, are dropped).
        """
        return self.forward_raw(x_t, t)[:, : self.out_channels]
