"""Benchmarks and load tools (not tests); each writes a JSON report and a PNG chart to benches/results."""
