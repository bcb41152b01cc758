"""Code every eyegazer fundus builder shares: sources and CSVs, decode, duplicates, splits, build."""
