// The PostgreSQL store: see PostgresMetering.
