"""Deterministic input gradient of deform_conv2d: a gather in a fixed order instead of atomics.

`deform_data_grad_kernel` scatters dL/dx with atomic adds, whose order (and so the rounding)
varies from run to run. Under torch.use_deterministic_algorithms(True) this path runs instead:

1. `deform_scatter_plan_kernel` lists, for every sample (n, offset group, tap, oh, ow) and each
   of its four corners, the input pixel it lands on (a flat key) and its bilinear weight times
   the modulation. Corners outside the image get a key past the last pixel.
2. A stable sort by key groups each pixel's contributions, in sample order, and
   `searchsorted` gives where each pixel's run starts (a CSR index).
3. `deform_input_grad_gather_kernel` gives every dL/dx element to exactly one program, which
   walks its pixel's contributions tap by tap in that fixed order, forming each contribution's
   dL/dA = dz @ W^T in registers. No atomics, so the result is bitwise reproducible.

The extra memory is O(samples) = O(N * G * kH * kW * H_out * W_out) for the list (a few ints per
sample and corner), independent of the channel count: no im2col buffer. The price is compute:
dL/dA is formed once per corner (four times per sample) rather than once per sample.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .autotune import ANY_WIDTH, autotuned, prune_tiles, tile_configs
from .deform_kernels import (
    _bilinear_cell,
    _column_grad,
    _common_args,
    _dtype_flags,
    _mask_strides,
    _sample_point,
    _sampling_args,
)
from .geometry import ConvGeometry
from .launch import launch
from .tensors import empty_like_layout, needs_int64
from .tl_helpers import accumulator, lanes, widen

_PLAN_BLOCK = 128


@triton.jit
def _plan_corner(key_ptr, coef_ptr, entry, row_ok, key_base, yq, xq, weight, IN_H, IN_W,
                 OUTSIDE):
    inside = (yq >= 0) & (yq < IN_H) & (xq >= 0) & (xq < IN_W)
    tl.store(key_ptr + entry, tl.where(inside, key_base + yq * IN_W + xq, OUTSIDE), mask=row_ok)
    tl.store(coef_ptr + entry, weight, mask=row_ok)


@triton.jit
def deform_scatter_plan_kernel(
    off_ptr, mask_ptr, key_ptr, coef_ptr,
    N_OG, IN_H, IN_W, OUT_H, OUT_W, KW, N_TAPS, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    so_n, so_c, so_h, so_w, sm_n, sm_c, sm_h, sm_w, OUTSIDE,
    HAS_MASK: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr,
):
    # One program: BLOCK output positions of one (image, offset group, tap); entries are laid
    # out as [image, offset group, tap, position, corner], the order ties keep in the sort.
    event = tl.program_id(1).to(tl.int64)  # (n * N_OG + og) * N_TAPS + tap
    tap = event % N_TAPS
    og = (event // N_TAPS) % N_OG
    n = event // (N_TAPS * N_OG)
    pos = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row_ok = pos < OUT_H * OUT_W
    oh = pos // OUT_W
    ow = pos % OUT_W
    py, px, modulation = _sample_point(off_ptr, n * so_n + oh * so_h + ow * so_w, mask_ptr,
                                       n * sm_n + oh * sm_h + ow * sm_w, row_ok, og, tap, N_TAPS,
                                       KW, oh * STRIDE_H - PAD_H, ow * STRIDE_W - PAD_W, DIL_H,
                                       DIL_W, so_c, sm_c, HAS_MASK, IS_FP64)
    y0, x0, ly, lx = _bilinear_cell(py, px, IN_H, IN_W, True)
    entry = (event * OUT_H * OUT_W + pos) * 4
    key_base = event * IN_H * IN_W
    _plan_corner(key_ptr, coef_ptr, entry, row_ok, key_base, y0, x0,
                 (1.0 - ly) * (1.0 - lx) * modulation, IN_H, IN_W, OUTSIDE)
    _plan_corner(key_ptr, coef_ptr, entry + 1, row_ok, key_base, y0, x0 + 1,
                 (1.0 - ly) * lx * modulation, IN_H, IN_W, OUTSIDE)
    _plan_corner(key_ptr, coef_ptr, entry + 2, row_ok, key_base, y0 + 1, x0,
                 ly * (1.0 - lx) * modulation, IN_H, IN_W, OUTSIDE)
    _plan_corner(key_ptr, coef_ptr, entry + 3, row_ok, key_base, y0 + 1, x0 + 1,
                 ly * lx * modulation, IN_H, IN_W, OUTSIDE)


_GATHER_KEY = ["C_G", "COUT_G", "C_OG", "IN_H", "IN_W", "OUT_H", "OUT_W", "N_TAPS", "sdz_c",
               "sdx_c"]


def _prune_gather(configs, args):
    # Rows are input pixels, columns (BLOCK_K) channels; the dot reduces over output channels.
    return prune_tiles(configs, args["IN_H"] * args["IN_W"], args["C_OG"], args["COUT_G"],
                       args["dz_ptr"], blocks=("BLOCK_M", "BLOCK_K", "BLOCK_N"),
                       narrowest=ANY_WIDTH)


# Spill-free within sm_80's and sm_90's shared memory in fp16, bf16 and fp32 (see
# deform_kernels' tile lists). (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages).
_GATHER_TILES = (
    (128, 64, 32, 8, 3),
    (64, 64, 32, 8, 3),
    (128, 32, 32, 4, 3),
    # (64, 64, 32, 4, 3) spilled 8 bytes in fp32 on sm_80 with Triton 3.6 (dcnv2.res4.coco)
    (64, 32, 32, 4, 3),
)


@autotuned(key=_GATHER_KEY, prune=_prune_gather, configs=tile_configs(_GATHER_TILES))
@triton.jit
def deform_input_grad_gather_kernel(
    dz_ptr, w_ptr, start_ptr, pos_ptr, coef_ptr, dx_ptr,
    C_G, COUT_G, C_OG, N_OG, IN_H, IN_W, OUT_H, OUT_W, KW, N_TAPS,
    sw_out, sw_in, sw_h, sw_w, sdz_n, sdz_c, sdz_h, sdz_w, sdx_n, sdx_c, sdx_h, sdx_w,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, INT64: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program: dL/dx for BLOCK_M pixels x BLOCK_K channels of one offset group of one image.
    image_group = tl.program_id(1)  # n * N_OG + og
    n = widen(image_group // N_OG, INT64)
    og = widen(image_group % N_OG, INT64)
    pix = lanes(tl.program_id(0), BLOCK_M, INT64)
    pix_ok = pix < IN_H * IN_W
    c0 = og * C_OG + tl.program_id(2) * BLOCK_K
    c = c0 + tl.arange(0, BLOCK_K)
    c_end = og * C_OG + C_OG
    c_ok = c < c_end
    acc = accumulator(BLOCK_M, BLOCK_K, IS_FP64)
    for tap in range(0, N_TAPS):
        keys = (image_group * N_TAPS + tap).to(tl.int64) * IN_H * IN_W + pix
        start = tl.load(start_ptr + keys, mask=pix_ok, other=0)
        count = tl.load(start_ptr + keys + 1, mask=pix_ok, other=0) - start
        w_tap = (tap // KW) * sw_h + (tap % KW) * sw_w
        for j in range(0, tl.max(count, axis=0)):
            ok = pix_ok & (j < count)
            pos = tl.load(pos_ptr + start + j, mask=ok, other=0)
            coef = tl.load(coef_ptr + start + j, mask=ok, other=0.0)
            dz_rows = n * sdz_n + (pos // OUT_W) * sdz_h + (pos % OUT_W) * sdz_w
            col_grad = _column_grad(dz_ptr, dz_rows, ok, w_ptr, w_tap, c, c_ok, c0, c_end, C_G,
                                    COUT_G, sdz_c, sw_out, sw_in, INPUT_PRECISION, UPCAST,
                                    IS_FP64, BLOCK_M, BLOCK_N, BLOCK_K)
            acc += col_grad * coef[:, None]
    dx_offsets = (n * sdx_n + (pix // IN_W) * sdx_h + (pix % IN_W) * sdx_w)[:, None]
    tl.store(dx_ptr + dx_offsets + (c * sdx_c)[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & c_ok[None, :])


def input_grad_deterministic(dz: torch.Tensor, x: torch.Tensor, offset: torch.Tensor,
                             mask: torch.Tensor | None, weight: torch.Tensor,
                             geometry: ConvGeometry, offset_groups: int) -> torch.Tensor:
    """dL/dx in x's dtype and layout, bitwise reproducible (see the module docstring)."""
    batch, taps = geometry.batch, geometry.taps
    out_positions = math.prod(geometry.output_size)
    pixel_keys = batch * offset_groups * taps * math.prod(geometry.input_size)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    entries = batch * offset_groups * taps * out_positions * 4
    keys = torch.empty(entries, device=x.device, dtype=torch.int64)
    coefs = torch.empty(entries, device=x.device, dtype=acc_dtype)
    plan_grid = (triton.cdiv(out_positions, _PLAN_BLOCK), batch * offset_groups * taps)
    launch(deform_scatter_plan_kernel, plan_grid,
        offset, mask if mask is not None else offset, keys, coefs, offset_groups,
        *geometry.input_size, *geometry.output_size, geometry.kernel_size[1], taps,
        *_sampling_args(geometry), *offset.stride(), *_mask_strides(mask), pixel_keys,
        HAS_MASK=mask is not None, IS_FP64=acc_dtype == torch.float64, BLOCK=_PLAN_BLOCK)
    keys, order = torch.sort(keys, stable=True)
    coefs = coefs[order]
    positions = ((order // 4) % out_positions).to(torch.int32)
    del order
    starts = torch.searchsorted(keys, torch.arange(pixel_keys + 1, device=x.device))
    del keys

    dx = empty_like_layout(tuple(x.shape), x)
    grid = lambda meta: (triton.cdiv(math.prod(geometry.input_size), meta["BLOCK_M"]),
                         batch * offset_groups,
                         triton.cdiv(geometry.in_channels // offset_groups, meta["BLOCK_K"]))
    common = _common_args(geometry, offset_groups)
    launch(deform_input_grad_gather_kernel, grid,
        dz, weight, starts, positions, coefs, dx, *common[1:4], offset_groups, *common[4:],
        *weight.stride(), *dz.stride(), *dx.stride(),
        INT64=needs_int64(dz, dx), **_dtype_flags(x))
    return dx
