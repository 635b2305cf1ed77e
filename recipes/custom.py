"""Fine-tune Florence-2 on your own data: VQA, captioning, OCR, object detection or phrase grounding.

This runs the package's one fine-tuning recipe, `florence_recipes.training.recipe.main` (the same as
`recipes/docvqa.py`): the YAML's `task:` or `dataset_mixture:` picks the data; collator, Trainer and metrics are
shared. This script gives these recipes their own name and launch commands.

Your data: a `.jsonl` / `.parquet` file, a folder of `train.jsonl` + `validation.jsonl` (image paths
relative to the folder), or an imagefolder with `metadata.jsonl`. Row formats per task:

    vqa:        {"image": "images/1.png", "question": "...", "answers": ["...", ...]}  (or "prompt", "answer")
    caption:    {"image": ..., "caption": "..."}           ocr: {"image": ..., "text": "..."}
    detection:  {"image": ..., "objects": [{"bbox": [x0, y0, x1, y1], "label": "cat"}, ...]}  (pixels)
    grounding:  {"image": ..., "caption": "...", "objects": [{"bbox": [...], "label": "<phrase>"}, ...]}

Folders other Florence-2 tools wrote are read as they are, no renaming or column mapping (docs/formats.md): a
maestro / Roboflow Florence-2 JSONL export, a COCO detection export (Roboflow or plain COCO), LLaVA
conversations. The layout is detected (or named with `--dataset_format`) and implies the task:

    accelerate launch recipes/custom.py --config recipes/custom/vqa_jsonl_smoke.yaml --dataset_name my_roboflow_export

Offline smoke runs (tiny random Florence-2 + synthetic data, CPU, ~20 s each):

    accelerate launch recipes/custom.py --config recipes/custom/vqa_jsonl_smoke.yaml
    accelerate launch recipes/custom.py --config recipes/custom/detection_smoke.yaml

Florence-2-base on your own folder, one GPU:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/custom.py \
        --config recipes/custom/detection.yaml --dataset_name path/to/my_boxes
"""

from florence_recipes.cli import run_recipe
from florence_recipes.training.recipe import main

if __name__ == "__main__":
    run_recipe(main)
