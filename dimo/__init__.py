"""dimo: view-adaptive human video generation (3DiMo, HVG) on one data pipeline and one evaluation harness."""

__version__ = "0.1.0"
