"""Fine-tune Florence-2 on your own data: VQA, captioning, OCR, object detection or phrase grounding.

This runs `recipes/docvqa.py`'s `main()`: that script is task-generic (the YAML's `task:` picks how rows
become prompts and targets, and how predictions are scored), so a second training loop would only be a
copy to keep in sync. This file gives the custom-data recipes their own entry point and launch commands.

Your data: a `.jsonl` / `.parquet` file, a folder of `train.jsonl` + `validation.jsonl` (image paths
relative to the folder), or an imagefolder with `metadata.jsonl`. Row formats per task:

    vqa:        {"image": "images/1.png", "question": "...", "answers": ["...", ...]}  (or "prompt", "answer")
    caption:    {"image": ..., "caption": "..."}           ocr: {"image": ..., "text": "..."}
    detection:  {"image": ..., "objects": [{"bbox": [x0, y0, x1, y1], "label": "cat"}, ...]}  (pixels)
    grounding:  {"image": ..., "caption": "...", "objects": [{"bbox": [...], "label": "<phrase>"}, ...]}

Offline smoke runs (tiny random Florence-2 + synthetic data, CPU, ~20 s each):

    accelerate launch recipes/custom.py --config recipes/custom/vqa_jsonl_smoke.yaml
    accelerate launch recipes/custom.py --config recipes/custom/detection_smoke.yaml

Florence-2-base on your own folder, one GPU:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/custom.py \
        --config recipes/custom/detection.yaml --dataset_name path/to/my_boxes
"""

from docvqa import main  # recipes/ is on sys.path when this file runs as a script

from florence_recipes.training import run_recipe

if __name__ == "__main__":
    run_recipe(main)
