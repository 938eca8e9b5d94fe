"""Flower adapters of the federated conditional GAN (seed 000).

The algorithm is in ``ai_engine.models.fed_cgan``; here: ``task.py`` (settings, site data,
weights <-> Flower records), ``client_app.py`` (one site), ``server_app.py`` (FedAvg/FedProx
with a per-round progress line), ``simulation.py`` (one machine), ``report.py`` (F-AD and the
baselines) and ``pyproject.toml`` (the Flower app for the deployment engine).
"""
