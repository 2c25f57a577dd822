"""Operations: partitions, plans, status and run summaries."""
