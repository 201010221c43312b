"""LiT zero-shot (Table 5): frozen backbone + attention-pool head, contrastive text tower; top-1/top-5.

Paper Section 4.1: a locked image tower, a trainable attention-pooling head and text tower, a contrastive loss;
zero-shot classification from class-name x prompt-template embeddings. Modules: `model` (LiT and its losses),
`checkpoint` (Apple's and transformers' LiT checkpoints), `zeroshot` (classifier from prompts), `data` (pairs and
evaluation sets), `plugin` (the `lit` task plugin). Text towers come from the registry in `aimv2_eval.text`.
"""
