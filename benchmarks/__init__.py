"""`python -m benchmarks`: measured budgets for every stage of the demo (see README.md)."""
