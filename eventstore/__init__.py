"""The system of record, shared by ingest, projections and audit: eventsourcing's PostgreSQL
recorder, extended at its extension points with the rows that must be written in the events'
transaction (Kafka positions, the `event_id` index, dead letters)."""
