"""fastgan benchmarks (a package, so its conftest never shadows tests/conftest.py)."""
