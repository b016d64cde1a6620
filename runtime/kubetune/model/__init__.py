"""Loading models and tokenizers, and the forward pass over packed batches."""
