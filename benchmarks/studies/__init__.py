"""Studies of the recipe's decisions, text rules and label issues, re-read from finished runs."""
