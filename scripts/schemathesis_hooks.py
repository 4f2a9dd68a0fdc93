"""Schemathesis hooks of scripts/schemathesis: each generated registration gets an e-mail
address of its own, and each generated product a SKU of its own. Generated cases repeat
values (the coverage phase varies one field at a time, the examples phase reuses the
documented example), and a repeated address or SKU can only meet 409, so without this most
registrations and products would never reach the rules being tested. A value that does not
match the documented pattern (a negative case) is left as it is."""

import re
import uuid

import schemathesis

# A local part short enough to take an 8-character prefix and stay within 64.
_PREFIXABLE_EMAIL = re.compile(r"^[^@\s]{1,56}@")
# A SKU short enough to take the same prefix and stay within 64.
_PREFIXABLE_SKU = re.compile(r"^[A-Za-z0-9_-]{1,56}$")

_UNIQUE = {
    ("/api/auth/register", "email"): _PREFIXABLE_EMAIL,
    ("/api/products", "sku"): _PREFIXABLE_SKU,
}


@schemathesis.hook
def map_body(context, body):
    operation = getattr(context, "operation", None)
    if operation is None or operation.method.upper() != "POST" or not isinstance(body, dict):
        return body
    for (path, field), pattern in _UNIQUE.items():
        value = body.get(field)
        if operation.path == path and isinstance(value, str) and pattern.match(value):
            body = dict(body)
            body[field] = uuid.uuid4().hex[:8] + value
    return body
