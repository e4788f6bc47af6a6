"""The stage cache: entries keyed by what determines them (store), and verify / gc (tools)."""
