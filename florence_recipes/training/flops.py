"""FLOPs of a training step as `torch.utils.flop_counter.FlopCounterMode` counts them, with its formulas corrected
for the CPU attention kernel and for the backward of grouped convolutions; the datasheet peaks MFU divides by.
The budget printed before training and the benchmark both count with `count_flops`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_backward_flop,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

# Dense bf16 tensor-core peaks from the datasheets, by substring of `torch.cuda.get_device_name()`;
# the first match wins, so the more specific names come first.
CUDA_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def _cpu_sdpa_flops(
    query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _conv_backward_flops(
    grad_out_shape: Any,
    x_shape: Any,
    w_shape: Any,
    bias: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: int,
    output_mask: list[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """torch's count for `convolution_backward`, with the weight gradient of a grouped convolution divided by
    `groups`: torch counts it as a dense one, `groups` times the real work (128-1024x for DaViT's depthwise
    position convolutions, a third of base full fine-tuning's counted FLOPs). The input gradient is right."""
    args = (
        grad_out_shape,
        x_shape,
        w_shape,
        bias,
        stride,
        padding,
        dilation,
        transposed,
        output_padding,
        groups,
    )
    grad_input = conv_backward_flop(*args, [output_mask[0], False], out_val=out_shape)
    grad_weight = conv_backward_flop(*args, [False, output_mask[1]], out_val=out_shape)
    return grad_input + grad_weight // groups


# Corrections to FlopCounterMode's formulas: it knows the CUDA attention kernels only (the CPU one has the same
# shapes and FLOPs), and it over-counts the backward of grouped convolutions.
_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    torch.ops.aten.convolution_backward: _conv_backward_flops,
}


@contextlib.contextmanager
def count_flops() -> Iterator[FlopCounterMode]:
    with FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS) as counter:
        yield counter
