"""Where state lives: a database (SQLite or PostgreSQL) and a store of files (a folder or S3)."""
