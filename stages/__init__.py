"""Thin DVC stage scripts: each reads params, calls fluxforge, exits non-zero with a readable message on failure."""
