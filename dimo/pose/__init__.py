"""2D keypoint detectors (toy heatmap network, ViTPose via transformers) and motion lifting."""
