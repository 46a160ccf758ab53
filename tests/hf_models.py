"""Shared builders for the parity tests: tiny HF models with seeded random weights, ours loaded from them,
and token / pixel inputs laid out the way the processor would (text, <vs>, pad tokens, <ve>).

Everything here is deterministic: weights come from a seeded generator, inputs from another one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from qwenvl_min import Config, QwenVL

HF_MODEL = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": Qwen3VLForConditionalGeneration,
    "qwen3_vl_moe": Qwen3VLMoeForConditionalGeneration,
}
HF_CONFIG = {
    "qwen2_vl": Qwen2VLConfig,
    "qwen2_5_vl": Qwen2_5_VLConfig,
    "qwen3_vl": Qwen3VLConfig,
    "qwen3_vl_moe": Qwen3VLMoeConfig,
}
PRESET = {
    "qwen2_vl": "tiny-qwen2-vl",
    "qwen2_5_vl": "tiny-qwen2.5-vl",
    "qwen3_vl": "tiny-qwen3-vl",
    "qwen3_vl_moe": "tiny-qwen3-vl-moe",
}
QWEN3 = ("qwen3_vl", "qwen3_vl_moe")
TIMESTAMP_TOKENS = 3  # stand-in length of the `<t.t seconds>` text before each Qwen3-VL video frame
WEIGHT_STD = 0.2  # large enough that every layer visibly changes the residual stream


def tiny_config(family: str, tied: bool) -> Config:
    """The tiny preset of a family (vision depth 4, full-attention blocks (1, 3) for 2.5, windows of
    4x4 merged tokens, GQA 4/2, mrope_section (2, 3, 3)) with the lm_head tied or not."""
    cfg = Config.preset(PRESET[family])
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tie_word_embeddings=tied))


def hf_config(cfg: Config):
    """The HF config object for one of our configs, every field set explicitly by `to_hf()`."""
    return HF_CONFIG[cfg.model_type](**cfg.to_hf())


def randomize_(module: torch.nn.Module, seed: int, std: float = WEIGHT_STD) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # tied weights appear once
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)


def randomize_scaled_(module: torch.nn.Module, seed: int) -> None:
    """Random weights that keep a deep, wide model's activations O(1): matrices N(0, 1/fan_in), norm
    weights N(1, 0.1), biases N(0, 0.02). Used for the real-size tower, where N(0, 0.2) would blow up."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
            elif "norm" in name or "ln_q" in name:
                p.normal_(1.0, 0.1, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)


def build_hf(cfg: Config, seed: int = 0, attn: str = "sdpa", std: float = WEIGHT_STD):
    """HF model (fp32, eval) with seeded random weights."""
    torch.manual_seed(seed)
    model = HF_MODEL[cfg.model_type]._from_config(hf_config(cfg), attn_implementation=attn)
    randomize_(model, seed, std)
    return model.eval()


def build_pair(cfg: Config, seed: int = 0, std: float = WEIGHT_STD):
    """(HF model, our model) sharing the same random weights; ours loaded through `QwenVL.from_hf`."""
    hf = build_hf(cfg, seed, std=std)
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    ours = QwenVL.from_hf(cfg.to_hf(), state)
    return hf, ours


# ---- inputs ---------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    """One batch of inputs in both APIs' vocabularies."""

    input_ids: Tensor  # (B, T)
    mm_token_type_ids: Tensor  # (B, T): 0 text, 1 image, 2 video (HF 5.24 needs it)
    attention_mask: Tensor | None = None
    pixel_values: Tensor | None = None
    image_grid_thw: Tensor | None = None
    pixel_values_videos: Tensor | None = None
    video_grid_thw: Tensor | None = None
    second_per_grid_ts: Tensor | None = None

    def ours(self) -> dict:
        return dict(
            attention_mask=self.attention_mask,
            pixel_values=self.pixel_values,
            image_grid_thw=self.image_grid_thw,
            pixel_values_videos=self.pixel_values_videos,
            video_grid_thw=self.video_grid_thw,
            second_per_grid_ts=self.second_per_grid_ts,
        )

    def hf(self) -> dict:
        kw = dict(input_ids=self.input_ids, mm_token_type_ids=self.mm_token_type_ids, **self.ours())
        return {k: v for k, v in kw.items() if v is not None}

    @property
    def valid(self) -> Tensor:
        """(B, T) bool: positions whose outputs are compared."""
        if self.attention_mask is None:
            return torch.ones_like(self.input_ids, dtype=torch.bool)
        return self.attention_mask.bool()


def merged_tokens(cfg: Config, grid: tuple[int, int, int]) -> int:
    t, h, w = grid
    return t * h * w // cfg.vision.merge_size**2


def make_prompt(
    cfg: Config,
    rows: list[list],
    seed: int = 0,
    second_per_grid_ts: list[float] | None = None,
) -> Prompt:
    """Build a batch from row layouts. A row is a list of items: an int n (n random text tokens),
    ("image", (t, h, w)) or ("video", (t, h, w)) (wrapped in <vs> ... <ve>), or ("pad", n) (n left-padding
    slots, attention_mask 0). Grids are consumed in order of appearance across the flattened batch.

    Qwen3-VL videos are laid out as transformers 5.24's processor writes them: inside the template's
    <vs> ... <ve>, every temporal patch is `<t.t seconds>` (TIMESTAMP_TOKENS random text tokens here),
    <vs>, its pad tokens, <ve>."""
    gen = torch.Generator().manual_seed(seed)
    text_high = min(
        cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
    )
    images, videos, ids_rows, types_rows, mask_rows = [], [], [], [], []
    for row in rows:
        ids, types, mask = [], [], []
        for item in row:
            if isinstance(item, int):
                ids += torch.randint(0, text_high, (item,), generator=gen).tolist()
                types += [0] * item
                mask += [1] * item
            elif item[0] == "pad":
                ids += [0] * item[1]
                types += [0] * item[1]
                mask += [0] * item[1]
            elif item[0] == "video" and cfg.model_type in QWEN3:
                t, h, w = item[1]
                videos.append(list(item[1]))
                n = merged_tokens(cfg, (1, h, w))
                ids.append(cfg.vision_start_token_id)
                types.append(0)
                for _ in range(t):
                    stamp = torch.randint(0, text_high, (TIMESTAMP_TOKENS,), generator=gen).tolist()
                    ids += (
                        stamp
                        + [cfg.vision_start_token_id]
                        + [cfg.video_token_id] * n
                        + [cfg.vision_end_token_id]
                    )
                    types += [0] * (TIMESTAMP_TOKENS + 1) + [2] * n + [0]
                ids.append(cfg.vision_end_token_id)
                types.append(0)
                mask += [1] * (len(ids) - len(mask))
            else:
                kind, grid = item
                n = merged_tokens(cfg, grid)
                token, type_id = (cfg.image_token_id, 1) if kind == "image" else (cfg.video_token_id, 2)
                (images if kind == "image" else videos).append(list(grid))
                ids += [cfg.vision_start_token_id] + [token] * n + [cfg.vision_end_token_id]
                types += [0] + [type_id] * n + [0]
                mask += [1] * (n + 2)
        ids_rows.append(ids)
        types_rows.append(types)
        mask_rows.append(mask)
    if len({len(r) for r in ids_rows}) != 1:
        raise ValueError("rows must have equal lengths (use ('pad', n) items)")
    patch_dim = cfg.vision.patch_dim

    def pixels(grids: list[list[int]]) -> tuple[Tensor | None, Tensor | None]:
        if not grids:
            return None, None
        grid = torch.tensor(grids, dtype=torch.int64)
        rows_needed = int(grid.prod(dim=1).sum())
        return torch.randn(rows_needed, patch_dim, generator=gen), grid

    pv, ig = pixels(images)
    pvv, vg = pixels(videos)
    has_pad = any(0 in m for m in mask_rows)
    seconds = None
    if second_per_grid_ts is not None:
        seconds = torch.tensor(second_per_grid_ts, dtype=torch.float32)
    return Prompt(
        input_ids=torch.tensor(ids_rows, dtype=torch.int64),
        mm_token_type_ids=torch.tensor(types_rows, dtype=torch.int64),
        attention_mask=torch.tensor(mask_rows, dtype=torch.int64) if has_pad else None,
        pixel_values=pv,
        image_grid_thw=ig,
        pixel_values_videos=pvv,
        video_grid_thw=vg,
        second_per_grid_ts=seconds,
    )


def hf_window_to_input_order(cfg: Config, x: Tensor, grid_thw: Tensor) -> Tensor:
    """HF's Qwen2.5-VL tower keeps per-patch states in window order; put them back in pixel_values row
    order (rows move in whole merge units of merge_size^2 patches)."""
    if cfg.model_type != "qwen2_5_vl":
        return x
    from transformers.vision_utils import get_vision_window_index

    v = cfg.vision
    window_index, _ = get_vision_window_index(grid_thw, v.merge_size, v.window_size, v.patch_size)
    unit = v.merge_size**2
    return x.view(-1, unit, x.shape[-1])[torch.argsort(window_index)].reshape(-1, x.shape[-1])


def scale_of(reference: Tensor) -> float:
    """Output scale for the fp32 rule: max(1, max|reference|)."""
    return max(1.0, reference.abs().max().item())


def max_err(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def rope_config(head_dim: int = 128, theta: float = 1e6, section=(16, 24, 24), axes: str = "sections"):
    """A one-head TextConfig that carries just the M-RoPE settings, for rotary-only tests."""
    from qwenvl_min import TextConfig

    return TextConfig(
        vocab_size=8, hidden_size=head_dim, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
        rms_norm_eps=1e-6, rope_theta=theta, mrope_section=tuple(section), tie_word_embeddings=True,
        mrope_axes=axes,
    )  # fmt: skip
