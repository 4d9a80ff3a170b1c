"""Publish one coding request to coderd with pika and print its reply.

    [CODERD_REQUEST_QUEUE=coding.requests] python examples/producer_pika.py [AMQP_URL]

Any AMQP 0-9-1 client works; this one is deliberately not the daemon's own (aio-pika).
"""

import json
import os
import sys
import time
import uuid

import pika

url = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/"
request_queue = os.environ.get("CODERD_REQUEST_QUEUE", "coding.requests")
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
reply_queue = channel.queue_declare(queue="", exclusive=True).method.queue  # ours alone

correlation_id = str(uuid.uuid4())
request = {
    "topic": "anzsco",
    "numberOfSuggestions": 3,
    "records": [
        {"recordId": "1", "occp_text": "software developer", "tasks_text": "writing code and unit tests"},
        {"recordId": "2", "occp_text": "Paramedic", "tasks_text": "respond to emergencies"},
    ],
}
channel.confirm_delivery()  # the broker confirms each publish, and reports one it cannot route
for attempt in range(30):
    try:
        channel.basic_publish(
            exchange="",  # the default exchange routes by queue name
            routing_key=request_queue,
            properties=pika.BasicProperties(reply_to=reply_queue, correlation_id=correlation_id,
                                            content_type="application/json", delivery_mode=2),
            body=json.dumps(request),
            mandatory=True,
        )
        break
    except pika.exceptions.UnroutableError:  # no such queue (yet): coderd declares it when it starts
        time.sleep(1)
else:
    sys.exit(f"no queue {request_queue!r} after 30 s: is coderd running?")
for _method, properties, body in channel.consume(reply_queue, auto_ack=True, inactivity_timeout=120):
    if body is None:
        sys.exit("no reply within 120 s: is coderd running?")
    if properties.correlation_id == correlation_id:  # replies may repeat: match and dedupe by this
        print(json.dumps(json.loads(body), indent=2))
        break
connection.close()
