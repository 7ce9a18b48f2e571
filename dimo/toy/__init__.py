"""Toy pretrained components in the real folder layouts, made by the project's own code (DESIGN.md 3.5)."""
