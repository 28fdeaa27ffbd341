"""Job-state stores (memory, SQLite, Redis) behind one `JobStore` contract; knows nothing of Tornado."""
