"""MVLift (Li et al., CVPR 2025, arXiv 2411.18808) at toy scale: 3D motion from single-view 2D sequences,
trained without any 3D label (docs/pose.md, "MVLift").

Stages: 1. a line-conditioned 2D motion diffusion model (:class:`~dimo.pose.mvlift.modules.LineDiffusionModule`);
2. multi-view optimisation on a 6-view ring with SDS + epipolar consistency
(:class:`~dimo.pose.mvlift.modules.ViewOptimisationModule`); 3. synthetic 4-view data by triangulation,
skeleton fit and reprojection (:func:`~dimo.pose.mvlift.fit.make_synthetic`); 4. a multi-view 2D
diffusion model with cross-view attention (:class:`~dimo.pose.mvlift.modules.MultiViewDiffusionModule`).
``python -m dimo.pose.mvlift.train`` (``make train-mvlift``) runs all four; :func:`~dimo.pose.mvlift.lift.mvlift_lift`
lifts a sequence.
"""

from dimo.pose.mvlift.data import Motion2DDataModule, MultiView2DDataModule
from dimo.pose.mvlift.modules import LineDiffusionModule, MultiViewDiffusionModule, ViewOptimisationModule

__all__ = [
    "LineDiffusionModule",
    "Motion2DDataModule",
    "MultiView2DDataModule",
    "MultiViewDiffusionModule",
    "ViewOptimisationModule",
]
