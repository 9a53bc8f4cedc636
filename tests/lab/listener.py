"""A TCP listener for the lab's destination: accepts connections and closes them at once.

Run inside the destination namespace: ``python3 listener.py PORT``. It listens on every IPv4 and
IPv6 address of the namespace, prints ``ready`` once both sockets listen, and exits when its
standard input closes, so it never outlives the process that started it.

Standard library only: this file runs under whatever python3 the namespace is given.
"""

from __future__ import annotations

import select
import socket
import sys


def main() -> None:
    port = int(sys.argv[1])
    v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    for sock, host in ((v4, "0.0.0.0"), (v6, "::")):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([v4, v6, sys.stdin], [], [])
        for sock in readable:
            if sock is sys.stdin:
                if not sys.stdin.buffer.read1(4096):
                    return
                continue
            try:
                connection, _ = sock.accept()
            except OSError:
                continue
            connection.close()


if __name__ == "__main__":
    main()
