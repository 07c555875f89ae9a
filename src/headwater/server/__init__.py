"""headwater.server."""
