"""Toy pretrained components in the real folder layouts, made by the project's own code (DESIGN.md 3.5,
docs/toy.md): ``wan`` (Wan2.1-Diffusers-style folder for 3DiMo) and ``svd`` (SVD-xt-style folder for HVG)."""
