"""tornado-admin: keeps a database of every EVE Online market order fresh from ESI."""

__version__ = "0.1.0"
