"""headwater.triggers."""
