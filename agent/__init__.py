"""logmend: a log-stream sidecar agent that mends known errors and escalates the rest."""

__version__ = "0.1.0"
