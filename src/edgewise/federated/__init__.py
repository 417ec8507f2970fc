"""Federated learning on Flower: each client trains on data that never leaves it; the server aggregates."""
