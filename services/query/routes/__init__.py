"""HTTP routes of the query service, one module per area."""
