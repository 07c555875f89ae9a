"""headwater.store."""
