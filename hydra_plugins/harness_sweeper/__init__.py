"""The harness's Hydra sweeper (Hydra finds plugins only in the `hydra_plugins` namespace)."""
