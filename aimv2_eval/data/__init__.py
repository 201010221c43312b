"""Data: image-caption sources for pretraining, the embedded procedural scenes, caption tokenizers."""
