"""headwater.datasets."""
