"""headwater: data ingestion for machine learning in production."""
