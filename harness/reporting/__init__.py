"""Reporting: paper tables, figures, captions, console views, seed statistics, peer fidelity, results rows."""
