"""
The seed's walkthrough ("Relays and Portals"), run with the real `ockam`
command in a temporary OCKAM_HOME: three nodes, a forwarder (relay), a TCP
connection, a message through the relay, and an HTTP server reached through
a TCP outlet and inlet. Then the seed's last section, the Orchestrator: a
self-hosted Orchestrator started in the background, this home enrolled
(its project "default"), a relay at /project/default, a message and the
same HTTP server through it. Every command is printed with its output, then
every node is deleted and the Orchestrator stopped.

The seed uses ports 7000, 9000 and 6000 (and the Orchestrator 6252 and
4000-4099); this demo takes free ports instead so that it runs anywhere,
and prints them.

Run: python examples/seed_demo.py
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ockam(*args, show=True, stdin=None, cwd=None):
    cmd = [sys.executable, "-m", "ockamtw.cli", *args]
    if show:
        print("» ockam " + " ".join(args), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=60, cwd=cwd)
    if show and result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo failed: ockam {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def head(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def wait_for_head(port):
    deadline = time.monotonic() + 10
    while True:
        try:
            status = head(port)
            if status.startswith("HTTP/"):
                return status
        except OSError:
            status = ""
        if time.monotonic() > deadline:
            raise SystemExit(f"demo failed: no HTTP answer through the inlet ({status!r})")
        time.sleep(0.1)


def orchestrator(home, web_port):
    """
    The seed's Orchestrator section, with free ports.
    """
    http_port, inlet_port = free_port(), free_port()
    print("\n## Orchestrator\n")
    ockam("orchestrator", "start", "--http", f"127.0.0.1:{http_port}", "--project-ports", "0")
    ockam("enroll")
    info = ockam("project", "information", "--output", "json", show=False, cwd=home)
    with open(os.path.join(home, "project.json"), "w") as f:
        f.write(info)
    print("» ockam project information --output json > project.json")
    for name in ("n1", "n3"):
        ockam("node", "create", name, "--project", "project.json", show=False, cwd=home)
        print(f"» ockam node create {name} --project project.json")
    ockam("forwarder", "create", "n3", "--at", "/project/default", "--to", "/node/n3")
    ockam("message", "send", "hello", "--to", "/project/default/service/forward_to_n3/service/uppercase")
    ockam("tcp-outlet", "create", "--at", "/node/n3", "--from", "/service/outlet", "--to", f"127.0.0.1:{web_port}")
    ockam(
        "tcp-inlet", "create", "--at", "/node/n1", "--from", f"127.0.0.1:{inlet_port}",
        "--to", "/project/default/service/forward_to_n3/service/outlet",
    )
    print(f"» curl --head 127.0.0.1:{inlet_port}\n{wait_for_head(inlet_port)}")
    print()
    ockam("node", "delete", "--all")
    ockam("orchestrator", "stop")


def main():
    home = tempfile.mkdtemp(prefix="ockam-demo-")
    os.environ["OCKAM_HOME"] = home
    web = None
    try:
        relay_port, web_port, inlet_port = free_port(), free_port(), free_port()
        print("## Relay\n")
        ockam("node", "create", "n2", f"--tcp-listener-address=127.0.0.1:{relay_port}", show=False)
        print(f"» ockam node create n2 --tcp-listener-address=127.0.0.1:{relay_port}\n")
        ockam("node", "create", "n3", show=False)
        print("» ockam node create n3")
        ockam("forwarder", "create", "n3", "--at", "/node/n2", "--to", "/node/n3")
        print()
        ockam("node", "create", "n1", show=False)
        print("» ockam node create n1")
        ockam("tcp-connection", "create", "--from", "n1", "--to", f"127.0.0.1:{relay_port}")
        ockam("tcp-connection", "list", "--node", "n1")
        (conn,) = json.loads(ockam("tcp-connection", "list", "--node", "n1", "--output", "json", show=False))
        worker = "/service/" + conn["worker_address"].split("#", 1)[1]
        ockam("message", "send", "hello", "--from", "/node/n1", "--to", f"{worker}/service/forward_to_n3/service/uppercase")

        print("\n## Portal\n")
        print(f"» python3 -m http.server --bind 127.0.0.1 {web_port}")
        web = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=home,
        )
        ockam("tcp-outlet", "create", "--at", "/node/n3", "--from", "/service/outlet", "--to", f"127.0.0.1:{web_port}")
        ockam(
            "tcp-inlet", "create", "--at", "/node/n1", "--from", f"127.0.0.1:{inlet_port}",
            "--to", f"{worker}/service/forward_to_n3/service/outlet",
        )
        print(f"» curl --head 127.0.0.1:{inlet_port}\n{wait_for_head(inlet_port)}")

        print("\n## Nodes\n")
        ockam("node", "list", "--table")
        nodes = json.loads(ockam("node", "list", "--output", "json", show=False))
        assert all(n["status"] == "UP" for n in nodes), nodes
        print()
        ockam("node", "delete", "--all")

        orchestrator(home, web_port)
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=10)
        for args in (("node", "delete", "--all"), ("orchestrator", "stop")):
            subprocess.run([sys.executable, "-m", "ockamtw.cli", *args], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
