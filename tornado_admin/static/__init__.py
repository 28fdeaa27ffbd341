"""The dashboard's page, script and style sheet, served by tornado_admin/dashboard.py (package data)."""
