"""Who a client is, as the server can tell: its network, never a string it chose.

The address is the connection's, or behind a load balancer what `FORWARDED_ALLOW_IPS` lets
X-Forwarded-For say (uvicorn trusts it only when it is set; cli/serve.py). An IPv4 address
arriving as `::ffff:a.b.c.d` (a server bound to `::`) is that IPv4 address. A network is a /24
for IPv4 and a /48 for IPv6 -- what one sender easily holds -- and anything that is not an
address is one network, `other`, however many different strings arrive: a key is never what
a client wrote. A leaf of `serving/`.
"""

from __future__ import annotations

import hashlib
import ipaddress

OTHER = "other"


def address_of(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def network_of(host: str | None, v4: int = 24, v6: int = 48) -> str:
    """The client's network (`a.b.c.0/24`, `x:y:z::/48`), or `other` for what is not an address."""
    address = address_of(host)
    if address is None:
        return OTHER
    prefix = v4 if address.version == 4 else v6
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def pseudonym(text: str) -> str:
    """A stable, short, one-way name for a network (what a stored sample records)."""
    return hashlib.sha256(f"digitserve-client:{text}".encode()).hexdigest()[:16]
