"""Phrase grounding: a registry ViT in ViTDet form inside MM-Grounding-DINO (paper Sec. 4.2, Appendix D.2)."""
