"""Recipes to fine-tune Florence-2 with transformers' Seq2SeqTrainer."""

__version__ = "0.1.0"
