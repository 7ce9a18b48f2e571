"""Evaluation: Fréchet metrics (FID, FVD, FID-VID), pixel metrics, LPIPS, pose and multi-view metrics.

Submodules are imported lazily by their users; ``from dimo.eval.pose import mpjpe`` costs nothing else.
See docs/metrics.md for the conventions and the weight files.
"""
