"""Schemathesis hooks of scripts/schemathesis: each generated registration gets an e-mail
address of its own. Generated cases repeat addresses (the coverage phase varies one field at a
time), and a repeated one can only meet 409, so without this most registrations would never
reach the rules being tested. An address that does not match the documented pattern (a
negative case) is left as it is."""

import re
import uuid

import schemathesis

# A local part short enough to take an 8-character prefix and stay within 64.
_PREFIXABLE = re.compile(r"^[^@\s]{1,56}@")


@schemathesis.hook
def map_body(context, body):
    operation = getattr(context, "operation", None)
    if (
        operation is not None
        and operation.path == "/api/auth/register"
        and isinstance(body, dict)
        and isinstance(body.get("email"), str)
        and _PREFIXABLE.match(body["email"])
    ):
        body = dict(body)
        body["email"] = uuid.uuid4().hex[:8] + body["email"]
    return body
