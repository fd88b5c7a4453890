"""Data: the document schema, sources and their readers, the ledger, contracts, filters, dedup, shards,
tokenisation and packing."""
