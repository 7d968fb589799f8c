"""Whether a live child still carries what the operator applied (pure).

The API server adds defaults and fields of its own (cluster IPs, default modes, `apiVersion` in field
references, ...), so a child is compared on the fields the operator's manifest sets only: a value
someone changed by hand (a ConfigMap's job.yaml, a Service's ports, a Role's rules) differs and the
child is applied again, which takes the field back. Quantities compare by value (`1000m` == `1`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    **{u: Decimal(1000) ** (i + 1) for i, u in enumerate("kMGTPE")},
    **{f"{u}i": Decimal(1024) ** (i + 1) for i, u in enumerate("KMGTPE")},
}


def quantity_value(value: object) -> Decimal | None:
    """The value of a Kubernetes quantity (int, or a string such as 500m, 16Gi, 1e9); None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if not isinstance(value, str):
        return None
    m = _QUANTITY.fullmatch(value.strip())
    if not m:
        return None
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:
        return None
    if m.group(2):
        number *= Decimal(10) ** int(m.group(2)[1:])
    return number * _SUFFIX[m.group(3) or ""]


def _same_scalar(want: object, live: object) -> bool:
    if want == live and type(want) is type(live):
        return True
    if isinstance(want, int | str) and isinstance(live, int | str) and str(want) == str(live):
        return True  # an int the API server stores as a string (quantities, int-or-string ports)
    a, b = quantity_value(want), quantity_value(live)
    return a is not None and a == b


def drifted(want: Any, live: Any) -> bool:
    """Whether `live` differs from `want` on any field `want` sets (lists compare element by element)."""
    if isinstance(want, Mapping):
        if not isinstance(live, Mapping):
            return True
        return any(drifted(value, live.get(key)) for key, value in want.items())
    if isinstance(want, Sequence) and not isinstance(want, str):
        if not isinstance(live, Sequence) or isinstance(live, str) or len(want) != len(live):
            return True
        return any(drifted(w, v) for w, v in zip(want, live, strict=True))
    return not _same_scalar(want, live)


def drifted_child(manifest: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Whether a live child lost any field of its manifest (metadata: labels, annotations and owner only)."""
    meta = manifest.get("metadata") or {}
    live_meta = live.get("metadata") or {}
    for key in ("labels", "annotations", "ownerReferences"):
        if key in meta and drifted(meta[key], live_meta.get(key)):
            return True
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    return drifted(body, live)
