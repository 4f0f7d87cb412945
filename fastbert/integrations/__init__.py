"""Integrations of fastbert with other engines: ray.py (Ray Data batch inference)."""
