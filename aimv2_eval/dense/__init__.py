"""Dense prediction shared by the detection plugins (vitdet, grounding): the ViTDet form of any registry ViT and its
SimpleFPN (`vitdet.py`), their registration in mmdetection (`mmdet_glue.py`), and the protocol and epoch loop of a
fine-tuned detector (`finetune.py`). Plugins never import each other; what two of them share lives here."""
