"""The data pipeline: prompt templates, dataset formats, tokenization with loss masks, packing, caching.

Heavy libraries (datasets, transformers, torch) are imported inside the functions that need them.
"""
