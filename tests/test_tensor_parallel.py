"""Residency "shard" at the layer level (CPU, 2 gloo ranks): a Linear split over the group
computes what the whole Linear computes. Column-wise: each rank's rows of the output, bit for
bit, float8 scales and all. Row-wise: the partial products summed, the bias once; with float8
weights the input parts quantized with the whole input's scale, so that only the rounding of
the partial sums differs (each part's own scale would add FP8 error)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import gloo_rank, relative_error

from accel.parallel.launch import free_port

WIDTH_IN, WIDTH_OUT = 64, 32


def _weight(kind: str, w: torch.Tensor) -> torch.Tensor:
    from torchao.float8.inference import Float8MMConfig
    from torchao.quantization import Float8Tensor
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import (
        QuantizeTensorToFloat8Kwargs,
    )

    from accel.model.fp8_scaled import as_float8_weight, quantize_per_tensor

    if kind == "bf16":
        return w
    if kind == "fp8-per-tensor":  # an fp8_scaled file's, as stored
        return as_float8_weight(*quantize_per_tensor(w))
    return Float8Tensor.from_hp(w, granularity=PerRow(), mm_config=Float8MMConfig(use_fast_accum=True),
                                act_quant_kwargs=QuantizeTensorToFloat8Kwargs(granularity=PerRow()))


def _split_layers(rank: int, kind: str) -> tuple:
    from accel.parallel.tensor_parallel import Share, _Held, _place_share

    torch.manual_seed(0)  # the same layer and input on both ranks
    weight = _weight(kind, torch.randn(WIDTH_OUT, WIDTH_IN, dtype=torch.bfloat16))
    bias = torch.randn(WIDTH_OUT, dtype=torch.bfloat16)
    # channels of very different sizes: a part's own amax is far from the whole input's
    x = torch.randn(3, 5, WIDTH_IN, dtype=torch.bfloat16) * torch.linspace(0.1, 3.0, WIDTH_IN).to(torch.bfloat16)
    whole = F.linear(x, weight, bias)
    share = Share(rank, 2)
    results = {}
    for dim, name in ((0, "column"), (1, "row")):
        linear = torch.nn.Linear(1, 1)
        _place_share(linear, _Held(weight, bias, (set(), set())), dim, share, dist.group.WORLD)
        results[name] = linear(x if dim == 0 else share.of(x, 2))
        results[f"{name}_has_bias"] = linear.bias is not None
    own_scales = F.linear(share.of(x, 2), share.of(weight, 1))
    dist.all_reduce(own_scales)
    return (rank, torch.equal(results["column"], share.of(whole, 2)), results["column_has_bias"],
            results["row_has_bias"], relative_error(results["row"], whole), relative_error(own_scales + bias, whole))


@pytest.mark.parametrize("kind", ["bf16", "fp8-per-tensor", "fp8-per-row"])
def test_a_linear_split_over_two_ranks_computes_the_whole_linear(kind):
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(gloo_rank, args=(free_port(), _split_layers, queue, kind), nprocs=2, start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    for rank, column_exact, column_bias, row_bias, row_error, own_scale_error in results:
        assert column_exact and column_bias, rank
        assert row_bias == (rank == 0)  # added once, by the first rank
        assert row_error < 5e-3, (rank, row_error)  # two bf16 partial sums, rounded each
        if kind != "bf16":
            assert row_error < own_scale_error / 2, (rank, row_error, own_scale_error)
    assert results[0][4] == results[1][4]  # both ranks hold the same sum
