"""Tests of the ``airflow-provider-tfhub`` distribution: hooks, operators, sensors, triggers, DAGs."""
