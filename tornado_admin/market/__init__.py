"""The market-order sweep: ESI client (esi), page parsing (pages), storage (orders), the sweep (fetch)."""
