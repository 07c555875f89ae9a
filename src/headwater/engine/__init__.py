"""headwater.engine."""
