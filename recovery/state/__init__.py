"""Shared state in Redis: the clients and the key layout every component builds on."""
