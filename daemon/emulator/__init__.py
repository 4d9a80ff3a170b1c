"""A faithful stand-in for the ABS WoAG Occupation Coding Service, for tests and demos."""

from .app import EmulatorServer, build_app
from .settings import Client, Clock, EmulatorConfig, Faults
from .state import Emulator
from .threaded import ThreadedEmulatorServer

__all__ = ["Client", "Clock", "Emulator", "EmulatorConfig", "EmulatorServer", "Faults", "ThreadedEmulatorServer", "build_app"]
