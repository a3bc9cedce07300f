"""Tests of the ``tfhub-cache`` distribution (``tfhub_cache``): no Airflow metadata DB is set up here."""
