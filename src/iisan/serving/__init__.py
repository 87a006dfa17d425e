"""Serving a trained run: the recommender (queries, new items), the HTTP service."""
