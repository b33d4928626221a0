"""Triton kernels of the quantized self-attention (quantized_attention.py holds the scheme).

Written from the flash-attention formulas (online softmax over key blocks): q k^T on INT8
tensor cores (int32 accumulation), p v on FP8 tensor cores or in the values' 16-bit dtype, fp32
accumulation.

- ``quantize_blocks``: one (batch, head, block of tokens) per program: each token's absolute
  maximum over its channels gives its scale; the token is stored divided by it, rounded to
  int8, in a head-major buffer padded to whole blocks (zeros). Keys are smoothed first (their
  mean over the sequence subtracted: softmax does not see it, the range shrinks).
- ``quantize_values``: values in e4m3 with one scale per channel of a head, stored transposed
  ([.., D, S], padded), the layout an FP8 matmul takes its second operand in.
- ``attention``: one block of queries of one head per program; scores in fp32 from the two
  tokens' scales (the query's includes 1/sqrt(d) and log2(e)); with FP8 values the probabilities
  times 2^8 in e4m3 and the value scales applied once at the end; only the last key block is
  masked.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _token_block(x_ptr, seq, heads, stride_b, stride_s, stride_h, BLOCK: tl.constexpr, DIM: tl.constexpr):
    """This program's block of tokens of one (batch, head) of a [B, S, H, D] tensor, in fp32 (zeros
    past the sequence's end), its tokens' and channels' indices and the (batch, head) index."""
    bh = tl.program_id(1)
    tokens = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    channels = tl.arange(0, DIM)
    x = tl.load(x_ptr + (bh // heads) * stride_b + (bh % heads) * stride_h + tokens[:, None] * stride_s
                + channels[None, :], mask=tokens[:, None] < seq, other=0.0).to(tl.float32)
    return x, tokens, channels, bh


@triton.jit
def quantize_blocks(x_ptr, mean_ptr, out_ptr, scale_ptr, seq, heads, stride_b, stride_s, stride_h,
                    multiplier, BLOCK: tl.constexpr, DIM: tl.constexpr, SMOOTH: tl.constexpr):
    x, tokens, channels, bh = _token_block(x_ptr, seq, heads, stride_b, stride_s, stride_h, BLOCK, DIM)
    if SMOOTH:
        x = tl.where(tokens[:, None] < seq, x - tl.load(mean_ptr + bh * DIM + channels)[None, :], 0.0)
    scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12) / 127.0  # [BLOCK]: one per token
    scaled = x / scale[:, None]
    padded = tl.num_programs(0) * BLOCK
    tl.store(out_ptr + bh * padded * DIM + tokens[:, None] * DIM + channels[None, :],
             tl.where(scaled >= 0, scaled + 0.5, scaled - 0.5).to(tl.int8))  # rounded, not truncated
    tl.store(scale_ptr + bh * padded + tokens, scale * multiplier)


@triton.jit
def quantize_values(x_ptr, scale_ptr, out_ptr, seq, heads, padded, stride_b, stride_s, stride_h,
                    BLOCK: tl.constexpr, DIM: tl.constexpr):
    x, tokens, channels, bh = _token_block(x_ptr, seq, heads, stride_b, stride_s, stride_h, BLOCK, DIM)
    scale = tl.load(scale_ptr + bh * DIM + channels)
    tl.store(out_ptr + bh * DIM * padded + channels[None, :] * padded + tokens[:, None],
             (x / scale[None, :]).to(tl.float8e4nv))


@triton.jit
def _key_block(q, q_scale, k_base, v_base, stride_vs, stride_vd, k_scales, index, seq, row_max, row_sum, acc,
               BLOCK_N: tl.constexpr, DIM: tl.constexpr, MASKED: tl.constexpr, PV_FP8: tl.constexpr):
    start = index * BLOCK_N
    cols = start + tl.arange(0, BLOCK_N)
    channels = tl.arange(0, DIM)
    k = tl.load(k_base + cols[None, :] * DIM + channels[:, None])
    dots = tl.dot(q, k, out_dtype=tl.int32)
    # int32 -> fp32 by adding 1.5 * 2^23 to the bits (exact: |dots| <= D * 127^2 < 2^22), which
    # keeps the conversion off the GPU's quarter-rate conversion units (the exp2 already is there)
    y = ((dots + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0) * tl.load(k_scales + cols)[None, :]
    if MASKED:
        y = tl.where(cols[None, :] < seq, y, float("-inf"))
    new_max = tl.maximum(row_max, q_scale * tl.max(y, axis=1))  # q_scale > 0
    # probabilities times 2^8 for e4m3 (exact, well inside its range); 1 for 16 bit
    p = tl.math.exp2(y * q_scale[:, None] - (new_max - (8.0 if PV_FP8 else 0.0))[:, None])
    alpha = tl.math.exp2(row_max - new_max)
    row_sum = row_sum * alpha + tl.sum(p, axis=1)  # scaled alike: the 2^8 cancels in acc / row_sum
    v_at = v_base + channels[None, :] * stride_vd + cols[:, None] * stride_vs
    acc = acc * alpha[:, None]
    if PV_FP8:  # padded to whole blocks
        acc = tl.dot(p.to(tl.float8e4nv), tl.load(v_at), acc)  # accumulated in the matmul
    elif MASKED:  # the values as given, not padded
        v = tl.load(v_at, mask=cols[:, None] < seq, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc)
    else:
        v = tl.load(v_at)
        acc = tl.dot(p.to(v.dtype), v, acc)
    return new_max, row_sum, acc


@triton.jit
def attention(q_ptr, k_ptr, v_ptr, q_scale_ptr, k_scale_ptr, v_scale_ptr, out_ptr, seq, full_blocks, heads,
              q_padded, kv_padded, stride_vb, stride_vh, stride_vs, stride_vd, stride_ob, stride_os, stride_oh,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DIM: tl.constexpr, PV_FP8: tl.constexpr):
    block = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    channels = tl.arange(0, DIM)
    q = tl.load(q_ptr + bh * q_padded * DIM + rows[:, None] * DIM + channels[None, :])
    q_scale = tl.load(q_scale_ptr + bh * q_padded + rows)  # includes 1/sqrt(d) and log2(e)
    k_base = k_ptr + bh * kv_padded * DIM
    v_base = v_ptr + b * stride_vb + h * stride_vh
    k_scales = k_scale_ptr + bh * kv_padded
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DIM], tl.float32)
    for index in range(0, full_blocks):  # full_blocks = seq // BLOCK_N
        row_max, row_sum, acc = _key_block(q, q_scale, k_base, v_base, stride_vs, stride_vd, k_scales, index, seq,
                                           row_max, row_sum, acc, BLOCK_N, DIM, False, PV_FP8)
    if full_blocks * BLOCK_N < seq:
        row_max, row_sum, acc = _key_block(q, q_scale, k_base, v_base, stride_vs, stride_vd, k_scales, full_blocks,
                                           seq, row_max, row_sum, acc, BLOCK_N, DIM, True, PV_FP8)
    if PV_FP8:
        acc = acc * tl.load(v_scale_ptr + bh * DIM + channels)[None, :]
    out = acc / row_sum[:, None]
    tl.store(out_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + channels[None, :],
             out.to(out_ptr.dtype.element_ty), mask=rows[:, None] < seq)
