"""One module per broker behind the stream source (see ``base.BrokerAdapter``)."""
