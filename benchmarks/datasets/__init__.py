"""Dataset benchmarks: each is its data preparation and its recipe (configs/DATASET/recipe.yaml) on
one harness (`harness`), with label noise and caches written once (`prepare`)."""
