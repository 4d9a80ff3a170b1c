"""coderd: codes occupation text from RabbitMQ requests through the ABS coding API."""

__version__ = "0.1.0"
