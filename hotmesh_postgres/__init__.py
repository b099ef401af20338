"""PostgreSQL reference backend (see issue: PostgreSQL reference backend)."""
