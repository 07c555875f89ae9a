"""headwater.scaffold."""
