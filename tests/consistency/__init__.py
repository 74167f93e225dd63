"""Tests of unbundled.consistency: the linearizability checker and its formats."""
