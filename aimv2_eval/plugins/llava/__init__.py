"""LLaVA-style instruction tuning: frozen tower + MLP connector + causal LM; VQA, OCR, MC and caption benchmarks."""
