"""ViTDet detection: Mask R-CNN on a fine-tuned registry ViT, COCO box and mask AP (Table D3)."""
