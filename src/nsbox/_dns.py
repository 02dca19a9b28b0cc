"""The only importer of dnspython: the wire format of a network's name server.

The hub answers A queries for the names of its live sandboxes (`db` and
`db.<network>.nsbox`), with TTL 0 so that a name reused by a later sandbox is
never served stale. It forwards nothing: sandboxes have no way out anyway.
"""

from __future__ import annotations

from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def answer(wire: bytes, domain: str, lookup: Callable[[str], str | None]) -> bytes | None:
    """The response to the query `wire`, or None for what is not a query.

    `lookup(name)` gives the address of a sandbox's name, or None.
    """
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    if query.flags & dns.flags.QR:
        return None
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA
    reply.flags &= ~dns.flags.RA
    if len(query.question) != 1:
        reply.set_rcode(dns.rcode.FORMERR)
        return reply.to_wire()
    q = query.question[0]
    qname = q.name.to_text(omit_final_dot=True).lower()
    suffix = "." + domain
    short = qname[: -len(suffix)] if qname.endswith(suffix) else qname
    if "." in short:  # another domain: not ours to answer
        reply.set_rcode(dns.rcode.REFUSED)
        return reply.to_wire()
    address = lookup(short) if short != domain else None
    if address is None:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and q.rdclass == dns.rdataclass.IN:
        reply.answer.append(dns.rrset.from_text(q.name, 0, "IN", "A", address))
    # Other types of a known name: an empty answer (NOERROR), so resolvers
    # asking for AAAA first do not wait.
    return reply.to_wire()
