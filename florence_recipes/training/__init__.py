"""Layer 6, training: the recipe and everything that runs while a model trains.

Owns `FlorenceTrainer` (`trainer`: the collator, scorer and callbacks wired into `Seq2SeqTrainer`), the speed
switches (`speed`: grouped sampling, the image-feature cache), the guards (`callbacks`), checkpoint folders and
resuming (`checkpoints`), `training_curves.png` (`curves`), the Hub and the model card (`hub`, `model_card`),
the compute budget and its FLOP counting (`budget`, `flops`), evaluating a saved checkpoint as the recipe does
(`evaluate`) and the recipe's `main()` itself (`recipe`). May import every layer below (`builders`,
`evaluation`, `models`, `data`, `configs`, `errors`); only `tooling` imports it.
"""
