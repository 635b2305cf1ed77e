"""Layer 3, models: Florence-2 itself, as the recipes load, train, convert and serve it.

Owns the release's facts (`florence2`: added tokens, vocabulary, image tokens), loading the native classes and
the training modes full / frozen_vision / lora (`loading`), opening checkpoints saved by the original remote code
(`legacy`, with `legacy_config`, `legacy_weights`, `legacy_lora`), the training record every saved folder carries
(`provenance`: `florence_recipes.json`) and inference for predict, evaluate and the demo (`inference`, with the
torch-free `outputs` it shares with ONNX), and deployment: the ONNX export (`onnx_export`, `onnx_merge`) and
greedy answers on onnxruntime with no torch model (`onnx_inference`). May import `data`, `configs` and
`errors`; never the trainer, the scorer or the builders above it.
"""
