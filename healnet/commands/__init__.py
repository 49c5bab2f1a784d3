"""Thin CLI front-ends: parse arguments, call the package function."""
