"""Triggers: of the deferrable TF Hub sensors (:mod:`.tfhub`) and event triggers for ``AssetWatcher`` (:mod:`.events`).

Registered under ``triggers`` in provider info.
"""

from airflow_provider_tfhub.triggers.events import TFHubRevisionPublishedTrigger, TFHubUpstreamChangedTrigger

__all__ = ["TFHubRevisionPublishedTrigger", "TFHubUpstreamChangedTrigger"]
