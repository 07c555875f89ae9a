"""headwater.config."""
