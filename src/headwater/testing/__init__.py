"""``headwater test``: pipeline tests as data (fixture inputs → expected datasets)."""
