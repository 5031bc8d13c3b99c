"""``python -m bench <name>``: run one benchmark (``relay``, ``control``, ``ssh``, ``tunnel``,
``wan``) or the WAN link emulator (``link``)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: python -m bench relay [--json] [--seconds S] [--rtt-count N]"
                         " [--idle-clients N]\n"
                         "       python -m bench control [--backend sqlite|postgres|both]"
                         " [--clients N] [--seconds S] [--builds N] [--json]\n"
                         "       python -m bench ssh [--mib N] [--rtt-count N] [--runs N]"
                         " [--json]\n"
                         "       python -m bench tunnel [--seconds S] [--rtt-count N] [--json]\n"
                         "       python -m bench wan [--rtts MS,...] [--rate-mbit R] [--mib N]"
                         " [--quick] [--json]\n"
                         "       python -m bench link --target HOST:PORT [--listen HOST:PORT]"
                         " [--delay-ms D] [--rate-mbit R] [--jitter-ms J]\n")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "relay":
        from bench import relay

        return relay.main(rest)
    if name == "control":
        from bench import control

        return control.main(rest)
    if name == "ssh":
        from bench import ssh

        return ssh.main_cli(rest)
    if name == "tunnel":
        from bench import tunnel

        return tunnel.main(rest)
    if name == "wan":
        from bench import wan

        return wan.main(rest)
    if name == "link":
        from bench import link

        return link.main(rest)
    if name == "_role":  # internal: child processes of a benchmark
        from bench import relay

        relay._run_role(rest)
        return 0
    sys.stderr.write(
        f"python -m bench: unknown benchmark {name!r}"
        " (known: relay, control, ssh, tunnel, wan, link)\n"
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
