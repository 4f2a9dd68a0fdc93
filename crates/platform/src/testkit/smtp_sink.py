"""The SMTP server of Shop's tests: aiosmtpd's own Maildir handler, which keeps every
message it accepts, refusing for good (550) any recipient at refused.test so that tests can
see a permanent refusal. Written by the test kit next to the Maildir it serves."""

from aiosmtpd.handlers import Mailbox


class Sink(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().endswith("@refused.test"):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"
