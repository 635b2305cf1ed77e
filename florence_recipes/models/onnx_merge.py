"""ONNX graph work after the export: merge the two decoders into one, quantize to int8.

`decoder_model_merged.onnx` is what transformers.js loads for encoder-decoder models (and what optimum writes):
one graph whose `If` on the boolean input `use_cache_branch` runs the decoder with past key values (then) or
without them (else), the weights stored once. optimum's own merger (`optimum.onnx.merge_decoders`) is not
installable next to transformers 5 (optimum-onnx pins transformers < 4.58), so it is done here with `onnx`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import GraphProto, TensorProto, helper, numpy_helper

USE_CACHE_BRANCH = "use_cache_branch"


def merge_decoders(plain: Path, cached: Path, output: Path) -> Path:
    """`decoder_model_merged.onnx` from `plain` (no past: all `present.*` out) and `cached` (with past: the
    decoder's `present.*` out; the encoder's are passed through from its past inputs)."""
    first, step = onnx.load(str(plain)), onnx.load(str(cached))
    initializers: dict[bytes, TensorProto] = {}  # content hash -> the one stored copy
    renames = [
        _rename_map(graph, prefix, initializers)
        for graph, prefix in ((first.graph, "first"), (step.graph, "step"))
    ]
    outputs = [out.name for out in first.graph.output]  # logits, then every present.* in order
    else_branch = _branch(first.graph, renames[0], "first", outputs, passthrough={})
    own = {out.name for out in step.graph.output}
    passthrough = {
        name: name.replace("present.", "past_key_values.", 1) for name in outputs if name not in own
    }
    then_branch = _branch(step.graph, renames[1], "step", outputs, passthrough)

    inputs = {value.name: value for value in [*first.graph.input, *step.graph.input]}
    inputs[USE_CACHE_BRANCH] = helper.make_tensor_value_info(USE_CACHE_BRANCH, TensorProto.BOOL, [1])
    node = helper.make_node(
        "If",
        [USE_CACHE_BRANCH],
        outputs,
        then_branch=then_branch,
        else_branch=else_branch,
        name="optimum::if",
    )
    graph = helper.make_graph(
        [node],
        "decoder_model_merged",
        list(inputs.values()),
        list(first.graph.output),
        list(initializers.values()),
    )
    merged = helper.make_model(graph, opset_imports=first.opset_import, producer_name="florence-recipes")
    merged.ir_version = first.ir_version
    onnx.save(merged, str(output))
    return output


def _rename_map(graph: GraphProto, prefix: str, initializers: dict[bytes, TensorProto]) -> dict[str, str]:
    """New names for a decoder's values: its initializers become shared outer-scope ones (one copy per
    distinct content), every value its nodes make is prefixed so the two branches never share a name."""
    renames: dict[str, str] = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        key = hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).digest()
        if key not in initializers:
            initializers[key] = numpy_helper.from_array(array, f"{prefix}/{tensor.name}")
        renames[tensor.name] = initializers[key].name
    for node in graph.node:
        for name in node.output:
            if name:
                renames[name] = f"{prefix}/{name}"
    return renames


def _branch(
    graph: GraphProto, renames: dict[str, str], prefix: str, outputs: list[str], passthrough: dict[str, str]
) -> GraphProto:
    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{prefix}/{node.name}"
        copy.input[:] = [renames.get(name, name) for name in node.input]
        copy.output[:] = [renames.get(name, name) for name in node.output]
        nodes.append(copy)
    values = []
    for name in outputs:
        if name in passthrough:  # with a past, the encoder's keys/values are the past ones, unchanged
            nodes.append(helper.make_node("Identity", [passthrough[name]], [f"{prefix}/{name}"]))
        elif renames.get(name) != f"{prefix}/{name}":  # an output that is a graph input or an initializer
            nodes.append(helper.make_node("Identity", [renames.get(name, name)], [f"{prefix}/{name}"]))
        # Shapes left out: the present length differs between the branches.
        values.append(helper.make_tensor_value_info(f"{prefix}/{name}", TensorProto.FLOAT, None))
    return helper.make_graph(nodes, f"{prefix}_branch", [], values)


def quantize_int8(path: Path) -> Path:
    """`<name>_quantized.onnx` beside `path`: int8 weights, activations quantized on the fly (onnxruntime's
    dynamic quantization, the scheme of transformers.js' `q8`/`quantized` files)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = path.with_name(f"{path.stem}_quantized.onnx")
    quantize_dynamic(
        path,
        output,
        # The ops that hold the weights (linear layers, embeddings); left to its defaults the quantizer also
        # tries the int64 shape arithmetic of the window attention and warns about each such tensor.
        op_types_to_quantize=["MatMul", "Gemm", "Gather"],
        weight_type=QuantType.QInt8,
        extra_options={"EnableSubgraph": True},  # the merged decoder's layers sit inside its `If` branches
    )
    return output
