"""headwater.connectors."""
