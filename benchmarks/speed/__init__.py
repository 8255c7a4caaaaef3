"""Throughput and scale: training steps, the data pipeline, indexing, tagging, WebVision-shaped
simulations."""
