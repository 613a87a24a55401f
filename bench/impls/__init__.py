"""The three implementations every workload runs on: raw-driver floor, SQLAlchemy Core, library."""
