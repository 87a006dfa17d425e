"""iisan: multimodal sequential recommendation with IISAN's decoupled side network."""

__version__ = "0.1.0"
