"""webly's benchmarks: scripts that print numbers (BENCHMARKS.md says what each measured).

Run from the repository root as modules, e.g. `python -m benchmarks.datasets.cifar10n --data ...`:
`datasets/` the dataset benchmarks (a data preparation and a recipe on one harness), `studies/`
the recipe's decisions and label issues re-read from finished runs, `speed/` throughput and scale.
"""
