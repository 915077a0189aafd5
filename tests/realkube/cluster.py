#!/usr/bin/env python3
"""Run a throw-away etcd + kube-apiserver on loopback for kubegate's real-cluster tests.

Usage:
    python3 tests/realkube/cluster.py [--apiserver PATH] [--etcd PATH] [--dir DIR] [--keep]

It builds nothing: pass the kube-apiserver that tests/realkube/build-apiserver.sh
printed (the default asks that script for it). On start it

  * makes a fresh directory (a new temporary one unless --dir names a new one) with a
    generated CA, a serving certificate for 127.0.0.1/localhost, a service-account key,
    a static token file with two identities -- `admin` (system:masters) and `gateway` --
    an audit policy at Metadata level and admin/gateway kubeconfigs;
  * picks free loopback ports, starts etcd with an empty data dir, then kube-apiserver
    (RBAC only, no insecure port, audit log in the directory) and waits for /readyz;
  * creates the ClusterRole `realkube-gateway-impersonator` (exactly `impersonate` on users and
    groups, nothing else) and binds it to the user `gateway`;
  * prints ONE line of JSON on stdout describing the cluster (paths, URL, tokens).

Then it reads commands, one per line, on stdin and answers each with one JSON line:

    stop-apiserver    stop kube-apiserver (etcd keeps running)
    start-apiserver   start it again on the same port and wait for /readyz
    status            report whether kube-apiserver is running
    quit              stop everything

End of input (the controlling process exited, however it died) stops etcd and
kube-apiserver and removes the directory (unless --keep), so nothing outlives its user.
Logs of both servers are in the directory (etcd.log, apiserver.log).
"""

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVICE_CIDR = "10.0.0.0/24"
START_TIMEOUT = 60.0

IMPERSONATOR_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "realkube-gateway-impersonator"},
    "rules": [
        {"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}
    ],
}
IMPERSONATOR_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "realkube-gateway-impersonator"},
    "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "realkube-gateway-impersonator",
    },
    "subjects": [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "gateway"}
    ],
}
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
"""


def log(msg):
    print(f"[realkube] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    raise SystemExit(f"[realkube] error: {msg}")


def free_ports(n):
    """n distinct free loopback ports (all held open while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return out.stdout


def generate_pki(d):
    """CA, serving certificate for 127.0.0.1/localhost, service-account key."""
    openssl = shutil.which("openssl") or fail("openssl not found (apt-get install openssl)")
    p = lambda name: os.path.join(d, name)  # noqa: E731
    run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=realkube test CA", "-keyout", p("ca.key"), "-out", p("ca.crt"),
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
         "-keyout", p("apiserver.key"), "-out", p("apiserver.csr")])
    with open(p("apiserver.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
                "DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1\n"
                "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
    run([openssl, "x509", "-req", "-in", p("apiserver.csr"), "-CA", p("ca.crt"),
         "-CAkey", p("ca.key"), "-CAcreateserial", "-days", "2", "-extfile", p("apiserver.ext"),
         "-out", p("apiserver.crt")])
    run([openssl, "genrsa", "-out", p("sa.key"), "2048"])
    run([openssl, "rsa", "-in", p("sa.key"), "-pubout", "-out", p("sa.pub")])


def kubeconfig(server, ca_file, user, token):
    with open(ca_file, "rb") as f:
        ca = base64.b64encode(f.read()).decode()
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: realkube\n  cluster:\n    server: {server}\n"
        f"    certificate-authority-data: {ca}\n"
        f"users:\n- name: {user}\n  user:\n    token: {token}\n"
        f"contexts:\n- name: {user}\n  context:\n    cluster: realkube\n    user: {user}\n"
        f"current-context: {user}\n"
    )


class Cluster:
    def __init__(self, args):
        self.apiserver_bin = args.apiserver
        self.etcd_bin = args.etcd
        self.keep = args.keep
        if args.dir:
            os.makedirs(args.dir)
            self.dir = os.path.abspath(args.dir)
        else:
            self.dir = tempfile.mkdtemp(prefix="kubegate-realkube-")
        self.etcd = None
        self.apiserver = None
        self.etcd_port = self.peer_port = self.port = None
        self.server = None
        self.admin_token = secrets.token_hex(24)
        self.gateway_token = secrets.token_hex(24)
        self.ssl = None

    def path(self, name):
        return os.path.join(self.dir, name)

    def prepare(self):
        generate_pki(self.dir)
        # Chosen as late as possible: the servers bind them moments from now.
        self.etcd_port, self.peer_port, self.port = free_ports(3)
        self.server = f"https://127.0.0.1:{self.port}"
        with open(self.path("tokens.csv"), "w") as f:
            f.write(f'{self.admin_token},admin,admin-uid,"system:masters"\n')
            f.write(f"{self.gateway_token},gateway,gateway-uid\n")
        os.chmod(self.path("tokens.csv"), 0o600)
        with open(self.path("audit-policy.yaml"), "w") as f:
            f.write(AUDIT_POLICY)
        for user, token in (("admin", self.admin_token), ("gateway", self.gateway_token)):
            with open(self.path(f"{user}.kubeconfig"), "w") as f:
                f.write(kubeconfig(self.server, self.path("ca.crt"), user, token))
        self.ssl = ssl.create_default_context(cafile=self.path("ca.crt"))

    # -- processes ------------------------------------------------------------------

    def start_etcd(self):
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        cmd = [
            self.etcd_bin, "--name", "realkube", "--data-dir", self.path("etcd-data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"realkube={peer}", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-level", "warn",
            # A test cluster: no fsync per write.
            "--unsafe-no-fsync",
        ]
        self.etcd = self.spawn(cmd, "etcd.log")
        self.wait(lambda: self.http_ok(f"{client}/health", tls=False), self.etcd, "etcd.log",
                  "etcd /health")

    def apiserver_cmd(self):
        p = self.path
        return [
            self.apiserver_bin,
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", "--insecure-port=0",
            "--advertise-address=127.0.0.1",
            f"--tls-cert-file={p('apiserver.crt')}", f"--tls-private-key-file={p('apiserver.key')}",
            f"--client-ca-file={p('ca.crt')}",
            f"--token-auth-file={p('tokens.csv')}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            f"--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={p('sa.pub')}",
            f"--service-account-signing-key-file={p('sa.key')}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",
            # No controller manager runs: nobody would create the default service
            # account (and its token) that this admission plugin waits for.
            "--disable-admission-plugins=ServiceAccount",
            f"--audit-policy-file={p('audit-policy.yaml')}",
            f"--audit-log-path={p('audit.log')}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            "--profiling=false", "--logtostderr=true", "--v=1",
        ]

    def start_apiserver(self):
        if self.apiserver is not None and self.apiserver.poll() is None:
            return
        self.apiserver = self.spawn(self.apiserver_cmd(), "apiserver.log")
        self.wait(lambda: self.http_ok(f"{self.server}/readyz"), self.apiserver,
                  "apiserver.log", "kube-apiserver /readyz")

    def stop_apiserver(self):
        self.stop(self.apiserver)
        self.apiserver = None

    def spawn(self, cmd, logname):
        logf = open(self.path(logname), "ab")
        # Own process group, so a Ctrl-C on the terminal reaches this script only and
        # it stops the servers in order.
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True)

    @staticmethod
    def stop(proc):
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait(self, ready, proc, logname, what):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                fail(f"{what}: process exited with {proc.returncode}; last log lines:\n"
                     + self.tail(logname))
            if ready():
                return
            time.sleep(0.1)
        fail(f"{what} not ready within {START_TIMEOUT:.0f} s; last log lines:\n"
             + self.tail(logname))

    def tail(self, logname, lines=30):
        try:
            with open(self.path(logname), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return f"({e})"

    # -- HTTP -----------------------------------------------------------------------

    def request(self, method, path, body=None):
        req = urllib.request.Request(
            f"{self.server}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.admin_token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ssl, timeout=10) as r:
            return r.status, r.read()

    def http_ok(self, url, tls=True):
        try:
            if tls:
                status, _ = self.request("GET", url[len(self.server):])
            else:
                with urllib.request.urlopen(url, timeout=2) as r:
                    status = r.status
            return status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def create(self, path, obj):
        try:
            self.request("POST", path, obj)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                fail(f"POST {path}: {e.code} {e.read().decode(errors='replace')}")

    def grant_impersonation(self):
        self.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", IMPERSONATOR_ROLE)
        self.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                    IMPERSONATOR_BINDING)

    def describe(self):
        return {
            "dir": self.dir,
            "server": self.server,
            "ca_file": self.path("ca.crt"),
            "admin_token": self.admin_token,
            "gateway_token": self.gateway_token,
            "admin_kubeconfig": self.path("admin.kubeconfig"),
            "gateway_kubeconfig": self.path("gateway.kubeconfig"),
            "audit_log": self.path("audit.log"),
            "apiserver_log": self.path("apiserver.log"),
            "etcd_log": self.path("etcd.log"),
            "etcd": f"http://127.0.0.1:{self.etcd_port}",
        }

    def shutdown(self):
        self.stop(self.apiserver)
        self.stop(self.etcd)
        self.apiserver = self.etcd = None
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def default_apiserver():
    out = subprocess.run(["bash", os.path.join(HERE, "build-apiserver.sh")],
                         stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        fail("build-apiserver.sh failed")
    return out.stdout.strip().splitlines()[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--apiserver", help="kube-apiserver binary (default: build-apiserver.sh)")
    ap.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd")
    ap.add_argument("--dir", help="a new directory for this cluster's files")
    ap.add_argument("--keep", action="store_true", help="keep the directory on exit")
    args = ap.parse_args()
    if not args.apiserver:
        args.apiserver = default_apiserver()
    for b in (args.apiserver, args.etcd):
        if not os.access(b, os.X_OK):
            fail(f"{b} is not an executable (run tests/realkube/build-apiserver.sh)")

    cluster = Cluster(args)

    def on_signal(signum, _frame):
        cluster.shutdown()
        sys.exit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        started = time.monotonic()
        cluster.prepare()
        cluster.start_etcd()
        cluster.start_apiserver()
        cluster.grant_impersonation()
        log(f"kube-apiserver ready at {cluster.server} in "
            f"{time.monotonic() - started:.1f} s; files in {cluster.dir}")
        if sys.stdin.isatty():
            log(f"try: KUBECONFIG={cluster.path('admin.kubeconfig')} kubectl get ns")
            log("commands: stop-apiserver, start-apiserver, status, quit (or Ctrl-D)")
        answer(cluster.describe())
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stop-apiserver":
                cluster.stop_apiserver()
                answer({"ok": True, "apiserver": "stopped"})
            elif cmd == "start-apiserver":
                cluster.start_apiserver()
                answer({"ok": True, "apiserver": "running"})
            elif cmd == "status":
                running = cluster.apiserver is not None and cluster.apiserver.poll() is None
                answer({"ok": True, "apiserver": "running" if running else "stopped"})
            elif cmd == "quit":
                break
            elif cmd:
                answer({"ok": False, "error": f"unknown command {cmd!r}"})
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
