"""The wire: versioned packets (hello, codes, end, error), 12-bit packing, close codes."""
