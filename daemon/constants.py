"""The coding API's fixed limits, as its user guide states them."""

MAX_RECORDS_PER_CALL = 300
MAX_SUGGESTIONS = 16
SYNC_MIN_CHARS, SYNC_MAX_CHARS = 3, 100  # occp_text + tasks_text, real-time endpoint
BATCH_MIN_CHARS, BATCH_MAX_CHARS = 3, 300  # occp_text + tasks_text, batch service
BATCH_MAX_FILE_BYTES = 5 * 1024**3

# How many times the broker delivers a request before dead-lettering it as poison.
DELIVERY_LIMIT = 5
# Unacked requests the daemon holds: enough to fill several 300-record calls.
PREFETCH = 1000
BULK, INTERACTIVE = "bulk", "interactive"  # the two lanes
INTERACTIVE_PREFETCH = 100  # the interactive lane: few records a message, answered at once
STANDBY = "standby"  # why a replica does not consume: another one holds the lease
