"""LLaVA: a CLIP-style image encoder, a projector into the LLM's embedding space, and the LLM; its data, training
pieces, saved layouts, chat and evaluations (MMBench, RefCOCO)."""
