"""Anomaly models, one folder each, behind `ai_engine.models.base.AnomalyModel`."""
