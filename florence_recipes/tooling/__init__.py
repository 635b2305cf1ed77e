"""Layer 7, tooling: commands that measure the recipes rather than run them.

Owns the benchmark against the blog's loop (`benchmark`, `benchmark_paths`, `blog_loop`, with `measure` and
`memory`), onnxruntime against PyTorch on the CPU (`onnx_benchmark`) and the first-GPU check (`gpu_check`,
`gpu_checks`, `gpu_plan`, `gpu_probes`). The top layer: it may import every other subpackage, and none of them
imports it.
"""
