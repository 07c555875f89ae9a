"""headwater.lineage."""
