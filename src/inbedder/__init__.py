"""InBedder reproduction: instruction-following text embeddings by answering the instruction."""

__version__ = "0.1.0"
