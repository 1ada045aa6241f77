"""Who reads a config key: every key's audience is in its section's `AUDIENCE` ("*": the section's default).

    shared      every party of a deployment must hold it alike (the handshake compares exactly these)
    server      read by the deployed server only
    client      read by a deployed client only (its data, its token, its measurements)
    each        each party's own, may differ (paths, devices, its optimizer's lr, the wire's limits)
    simulation  read by no deployed party (the simulated devices, simulated dropout, codec.up=auto's budget)
"""

from __future__ import annotations

SHARED, SERVER, CLIENT, EACH, SIMULATION = "shared", "server", "client", "each", "simulation"
AUDIENCES = (SHARED, SERVER, CLIENT, EACH, SIMULATION)


def audience_of(section: type, name: str) -> str:
    """The audience of key `name` of a section class."""
    aud: dict[str, str] = getattr(section, "AUDIENCE")  # noqa: B009 (every section has one; a test checks)
    return aud.get(name, aud["*"])
