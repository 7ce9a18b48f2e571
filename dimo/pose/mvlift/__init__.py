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

_LAZY = {
    "Motion2DDataModule": "dimo.pose.mvlift.data",
    "MultiView2DDataModule": "dimo.pose.mvlift.data",
    "LineDiffusionModule": "dimo.pose.mvlift.modules",
    "MultiViewDiffusionModule": "dimo.pose.mvlift.modules",
    "ViewOptimisationModule": "dimo.pose.mvlift.modules",
}


def __getattr__(name: str):
    # Lightning is imported only when a module or DataModule is asked for (configs name them as
    # dimo.pose.mvlift.<Class>), so lifting with dimo.pose.mvlift.lift starts faster.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LineDiffusionModule",
    "Motion2DDataModule",
    "MultiView2DDataModule",
    "MultiViewDiffusionModule",
    "ViewOptimisationModule",
]
