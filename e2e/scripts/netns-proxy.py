#!/usr/bin/env python3
"""TCP relay from listening addresses inside a network namespace to an address in this one.

Usage: netns-proxy.py NETNS_FILE TARGET_HOST:PORT LISTEN_HOST:PORT...

The real node (real-node-up.sh) lives in a private network namespace with no route out; the control
plane listens on the host's 127.0.0.1. This relay is that node's way to the API server: it opens its
listening sockets inside the node's namespace (setns, then back: a socket stays in the namespace it
was created in) and dials the target from the host namespace. Nothing else crosses: no route, no
forwarding, only this one port. It is the node-local API proxy of a real cluster, in 60 lines.
"""

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def split_addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # Half-close so the other direction can still drain (TLS close_notify, HTTP/2 GOAWAY).
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def serve(listener, target):
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(target, timeout=10)
            upstream.settimeout(None)
        except OSError as e:
            print(f"dial {target}: {e}", file=sys.stderr, flush=True)
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    netns, target, listens = sys.argv[1], split_addr(sys.argv[2]), [split_addr(a) for a in sys.argv[3:]]
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(netns, os.O_RDONLY)
    # Only the main thread changes namespace, before any thread exists; threads started later
    # inherit the host namespace it returns to, so every dial happens there.
    setns(there)
    listeners = []
    for addr in listens:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
        s.listen(128)
        listeners.append(s)
    setns(home)
    os.close(there)
    os.close(home)
    print(f"relaying {listens} in {netns} to {target}", flush=True)
    threads = [threading.Thread(target=serve, args=(s, target), daemon=True) for s in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
