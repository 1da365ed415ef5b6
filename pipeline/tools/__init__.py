"""Downstream tools over a finished output: SQL queries and exports, the HTML gallery."""
