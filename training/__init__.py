"""Training, calibration and evaluation of the engine's models (imports ai_engine only)."""
