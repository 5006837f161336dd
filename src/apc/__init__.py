"""APC: activation-pattern clustering for LLM FFN sparsity prediction.

The numeric core (patterns, clustering, metrics, masking, perplexity) needs
only torch and numpy; workflow glue (tracking, summary, plots) lives in its
own modules and is imported lazily.
"""

__version__ = "0.1.0"
