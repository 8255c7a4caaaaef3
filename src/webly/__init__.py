"""webly: noisy web images + their text -> a strong image classifier."""
__version__ = "0.1.0"
