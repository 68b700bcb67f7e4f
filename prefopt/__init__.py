"""prefopt: preference-optimization losses as plug-ins, with one shared trainer and Hydra sweeps."""

__version__ = "0.1.0"
