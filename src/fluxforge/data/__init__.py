"""Data: the document schema and readers, contracts, filters, dedup, tokenisation and packing."""
