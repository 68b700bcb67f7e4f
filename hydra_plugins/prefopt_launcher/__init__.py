"""prefopt's Hydra launcher plugin (Hydra finds launchers only inside the ``hydra_plugins`` namespace)."""
