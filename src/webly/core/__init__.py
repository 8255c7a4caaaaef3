"""The machinery every stage shares: typed configs, the one error type, progress, fault points,
atomic writes and the holdout decisions."""
