"""The SMTP server of Shop's tests, all of it aiosmtpd's: its Controller serving its Maildir
handler, which keeps every message it accepts. Two test hooks on top: any recipient at
refused.test is refused for good (550), so that tests see a permanent refusal; and with
--login USER:PASSWORD the server requires AUTH (over plain SMTP, as on a test bench).
Written by the test kit next to the Maildir it serves; stopped by a signal."""

import argparse
import signal

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult


class Sink(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().endswith("@refused.test"):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--port", type=int, required=True)
    args.add_argument("--maildir", required=True)
    args.add_argument("--login")
    a = args.parse_args()
    smtp = {}
    if a.login:
        user, password = a.login.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == user and auth_data.password.decode() == password
            return AuthResult(success=ok, handled=False)

        smtp = dict(authenticator=authenticator, auth_required=True, auth_require_tls=False)
    controller = Controller(Sink(a.maildir), hostname="127.0.0.1", port=a.port, **smtp)
    controller.start()
    print(f"serving on 127.0.0.1:{a.port}", flush=True)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    controller.stop()


if __name__ == "__main__":
    main()
