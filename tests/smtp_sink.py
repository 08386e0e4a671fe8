"""An SMTP server for the tests (aiosmtpd) that keeps every message it is given.

Each message is written to OUT/<n>.json (atomically: a temporary name, then a rename) as
{"mail_from", "rcpt_tos", "data", "tls", "login"}: `tls` says whether the session was
encrypted (implicit TLS or after STARTTLS), `login` is the user that authenticated, or null.

    smtp_sink.py --port P --out DIR [--host IP] [--mode plain|starttls|smtps] [--cert PEM --key PEM]
                 [--login USER:PASSWORD] [--login-over-plain]

plain offers no STARTTLS; starttls offers it; smtps speaks TLS from the first byte. With
--login the server offers AUTH PLAIN/LOGIN and takes only that user and password (over TLS
only, unless --login-over-plain). Prints "ready" once it accepts connections and serves
until it is killed.
"""

import argparse
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Keeper:
    def __init__(self, out):
        self.out = out
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        tls = session.ssl is not None or (
            server.transport is not None
            and server.transport.get_extra_info("ssl_object") is not None
        )
        login = getattr(session.auth_data, "login", None)
        if isinstance(login, bytes):
            login = login.decode("utf-8", "replace")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": envelope.content.decode("utf-8", "replace"),
            "tls": tls,
            "login": login if session.authenticated else None,
        }
        with self.lock:
            self.count += 1
            name = os.path.join(self.out, "%06d.json" % self.count)
        with open(name + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(name + ".tmp", name)
        return "250 OK"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["plain", "starttls", "smtps"], default="plain")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--login")
    parser.add_argument("--login-over-plain", action="store_true")
    args = parser.parse_args()

    kwargs = {}
    context = None
    if args.mode != "plain":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
    if args.mode == "starttls":
        kwargs["tls_context"] = context
    if args.login:
        user, password = args.login.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            return AuthResult(success=ok, auth_data=auth_data)

        kwargs["authenticator"] = authenticator
        # aiosmtpd counts only STARTTLS as TLS: on smtps the session is TLS from the start.
        kwargs["auth_require_tls"] = not (args.login_over_plain or args.mode == "smtps")
    controller = Controller(
        Keeper(args.out),
        hostname=args.host,
        port=args.port,
        ssl_context=context if args.mode == "smtps" else None,
        server_hostname="localhost",
        **kwargs,
    )
    controller.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
