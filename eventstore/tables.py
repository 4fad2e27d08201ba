"""Names of the event store's tables, in one place: everything else imports them from here."""

APPLICATION_NAME = "Rapport"  # eventsourcing derives its table names from it
EVENTS = "rapport_events"  # eventsourcing's events table: the log, in notification order
KAFKA_POSITIONS = "rapport_tracking"  # eventsourcing's tracking table: last offset per partition
EVENT_IDS = "rapport_event_ids"  # event_id -> content fingerprint, for duplicates and conflicts
DEAD_LETTERS = "rapport_dead_letters"  # every rejected message, once, with its reason
INGEST_COUNTERS = "rapport_ingest_counters"  # per Kafka partition: stored, duplicates, dead-lettered, batches

# The time eventsourcing recorded an event (its `timestamp`, set when ingest created it), read
# from the stored JSON of a row of EVENTS.
RECORDED_AT_SQL = "(convert_from(state, 'UTF8')::jsonb #>> '{timestamp,_data_}')::timestamptz"
# Checkpoints of the point-in-time fold (eventstore/checkpoints.py): caches beside the events.
STREAM_TIMES = "rapport_stream_times"  # per stream and block of versions: each interaction's occurred and recorded time
FOLD_CHECKPOINTS = "rapport_fold_checkpoints"  # per stream: folds of its events up to a version and an occurred time
# Identity resolution (eventstore/identity.py): written in the events' transaction by ingest.
IDENTITY_LINKS = "rapport_identity_links"  # each link events made, with its earliest event time
IDENTIFIERS = "rapport_identifiers"  # each identifier's customer now, and its own events' stream
IDENTITY_CUSTOMERS = "rapport_identity_customers"  # every customer id there is or was: version, merged_into
IDENTITY_SEPARATIONS = "rapport_identity_separations"  # operators' unmerges in force
IDENTITY_REFUSALS = "rapport_identity_refusals"  # links refused, by anchor and other identifier
IDENTITY_KEY = "rapport_identity_key"  # the fingerprint of the key emails and phones are hashed under
# Personal data (eventstore/sealing.py): each stream's key; destroying it erases the stream's personal fields.
STREAM_KEYS = "rapport_stream_keys"
