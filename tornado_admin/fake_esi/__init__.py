"""A local fake of ESI's market routes for tests, demos and benchmarks (see FakeEsi)."""

from __future__ import annotations

from tornado_admin.fake_esi.layouts import layout
from tornado_admin.fake_esi.server import FakeEsi
from tornado_admin.fake_esi.state import RegionSpec, RequestRecord

__all__ = ["FakeEsi", "RegionSpec", "RequestRecord", "layout"]
