"""Worked examples the docs and the demo use: small, complete, tested."""
