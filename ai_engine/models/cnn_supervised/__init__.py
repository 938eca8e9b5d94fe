"""Supervised CNN baseline (seed 001): MONAI ResNet classifier, Grad-CAM as the anomaly map."""
