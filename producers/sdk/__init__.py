"""The product SDK, embedded by applications (not a Tally process): `Client` and
`AsyncClient` publish catalog events with track() (client.py), the request-performance
middleware reports slow and failed requests through them (middleware.py), and pieces.py
encodes an event from cached, already-judged pieces. docs/sdk.md is the user's guide.

    from tally.producers.sdk import Client
"""

from tally.producers.sdk.client import Actor, AsyncClient, Client, RejectedEvent, Stats, Subject

__all__ = ["Actor", "AsyncClient", "Client", "RejectedEvent", "Stats", "Subject"]
