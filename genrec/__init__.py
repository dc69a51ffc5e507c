"""genrec: generative recommendation with semantic IDs and with LLMs, in PyTorch Lightning."""

__version__ = "0.1.0"
