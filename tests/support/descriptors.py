"""A compiled protobuf message as plain data -- each field's number, type, whether it repeats and
its message type, nested messages too (map entries left out) -- so two compilations of one
protocol can be compared across processes (tests/support/triton_grpc_client.py says why)."""

from __future__ import annotations

from typing import Any


def descriptor_fields(message: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        f.name: [f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None]
        for f in message.fields
    }
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            found[f"<{nested.name}>"] = descriptor_fields(nested)
    return found
