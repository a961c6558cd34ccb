"""Celery workers: size clamping, one adapter per upstream family, storage of results."""
