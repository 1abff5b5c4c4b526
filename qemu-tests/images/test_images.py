#!/usr/bin/env python3
"""Tests of the test images: they build reproducibly, they are valid OCI image layouts,
and they run under a real containerd (Debian's), started here with its own root, state
and socket under a temporary directory (a system containerd is left alone).

  python3 qemu-tests/images/test_images.py [-v]

Needs root and: containerd, ctr, runc, skopeo, gcc, apt-get (busybox-static),
mmdebstrap (coredns and Weave images). Outside CI a missing tool or root skips; with
CI=true it fails, naming what is missing.

Images and their inputs:
  pause, workload                      always
  coredns                              needs DIR/coredns or DIR/bin/coredns
  weave-kube, weave-npc                need weaver, weaveutil, kube-utils, weave-npc
DIR is $NODEIMAGE_TEST_BINS, else the newest ${NODEIMAGE_CACHE:-~/.cache/nodeimage}/upstream/**/bin
holding coredns. NODEIMAGE_TEST_IMAGES=pause,workload,... chooses the images (default:
all five); an image chosen whose binaries are missing fails the run under CI=true and
is skipped otherwise; the tests of an image left out are skipped, under CI too.

The test `WeaveScripts` builds weave-kube and weave-npc from STAND-IN binaries (copies
of Debian's /bin/true; shell stand-ins for weaver and kube-utils that print what they
are asked) when the real ones are missing: it exercises only this project's scripts
(init.sh with real iptables/ipset in a privileged container, the weaver command line
launch.sh builds, the weave-npc launcher's FIFO and ulogd configuration), never the
Weave binaries.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(HERE, "build")
CI = os.environ.get("CI", "").lower() == "true"
ARCH = "amd64"
EPOCH = 1735689600
ALL = ["pause", "workload", "coredns", "weave-kube", "weave-npc"]
BIN_NEEDS = {
    "coredns": ["coredns"],
    "weave-kube": ["weaver", "weaveutil", "kube-utils"],
    "weave-npc": ["weave-npc"],
}
CAP_NET_BIND_SERVICE_EP = bytes.fromhex("0100000200040000000000000000000000000000")


def missing(what: str):
    """A missing prerequisite: a failure under CI, a skip elsewhere."""
    if CI:
        raise AssertionError(f"CI=true and {what}")
    raise unittest.SkipTest(what)


def need_tools(*tools):
    if os.geteuid() != 0:
        missing("the test images' tests need root (containerd, mmdebstrap)")
    for t in tools:
        if not shutil.which(t):
            missing(f"`{t}` is not installed (apt-get install {PKG.get(t, t)})")


PKG = {"ctr": "containerd", "containerd": "containerd", "runc": "runc", "skopeo": "skopeo",
       "mmdebstrap": "mmdebstrap", "gcc": "gcc", "apt-get": "apt", "dpkg-deb": "dpkg"}


def find_bins() -> str | None:
    d = os.environ.get("NODEIMAGE_TEST_BINS")
    if d:
        return d
    cache = os.environ.get("NODEIMAGE_CACHE") or os.path.expanduser("~/.cache/nodeimage")
    cands = glob.glob(os.path.join(cache, "upstream", "**", "bin", "coredns"), recursive=True)
    if not cands:
        return None
    return os.path.dirname(max(cands, key=os.path.getmtime))


def has_bin(d: str | None, name: str) -> bool:
    return bool(d) and any(os.path.isfile(os.path.join(d, p)) for p in (name, os.path.join("bin", name)))


def chosen_images() -> list[str]:
    v = os.environ.get("NODEIMAGE_TEST_IMAGES")
    return [n.strip() for n in v.split(",") if n.strip()] if v else list(ALL)


def run(cmd, check=True, timeout=600, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def build(out: str, images: list[str], bins: str | None, *extra: str) -> tuple[dict, float]:
    cmd = [sys.executable, BUILD, "--arch", ARCH, "--out", out, "--only", ",".join(images), *extra]
    if bins:
        cmd += ["--bins", bins]
    t = time.monotonic()
    run(cmd, timeout=1800, env=dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH)))
    with open(os.path.join(out, "images.json")) as f:
        return json.load(f), time.monotonic() - t


def by_name(doc: dict) -> dict:
    return {i["name"]: i for i in doc["images"]}


# ------------------------------------------------------------- containerd ---


class Containerd:
    """Debian's containerd on its own socket, root and state under `tmp`."""

    def __init__(self, tmp: str):
        self.dir = tmp
        os.makedirs(tmp, exist_ok=True)
        self.sock = os.path.join(tmp, "containerd.sock")
        cfg = os.path.join(tmp, "config.toml")
        with open(cfg, "w") as f:
            f.write(f"""version = 2
root = "{tmp}/root"
state = "{tmp}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{tmp}/opt"
""")
        self.log = open(os.path.join(tmp, "containerd.log"), "w")
        self.proc = subprocess.Popen(["containerd", "--config", cfg], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(self.sock) and self.ctr("version", check=False).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"containerd did not start; log:\n{open(self.log.name).read()[-3000:]}")

    def ctr_cmd(self, *args) -> list[str]:
        return ["ctr", "-a", self.sock, "-n", "nodeimage-test", *args]

    def ctr(self, *args, check=True, timeout=300):
        return run(self.ctr_cmd(*args), check=check, timeout=timeout)

    def run(self, image: str, *args, opts=(), check=True, timeout=120):
        cid = f"t{time.monotonic_ns()}"
        return self.ctr("run", "--rm", *opts, image, cid, *args, check=check, timeout=timeout)

    def start(self, image: str, cid: str, *args, opts=()):
        """`ctr run --rm` in the background; returns the Popen (ctr exits with the task)."""
        return subprocess.Popen(self.ctr_cmd("run", "--rm", *opts, image, cid, *args),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def task_pid(self, cid: str) -> int:
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            w = line.split()
            if w and w[0] == cid:
                return int(w[1])
        raise AssertionError(f"no task {cid}")

    def wait_running(self, cid: str, timeout=20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.ctr("tasks", "ls").stdout
            for line in out.splitlines()[1:]:
                w = line.split()
                if w and w[0] == cid and w[2] == "RUNNING":
                    return int(w[1])
            time.sleep(0.2)
        raise AssertionError(f"task {cid} is not running:\n{out}")

    def stop(self):
        if self.proc.poll() is None:
            for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
                w = line.split()
                if w:
                    self.ctr("tasks", "kill", "-s", "SIGKILL", w[0], check=False)
            time.sleep(0.5)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        # Snapshots are overlay directories; nothing stays mounted once tasks are gone.
        subprocess.run(["umount", "-R", os.path.join(self.dir, "state")], capture_output=True)


# ------------------------------------------------------------------ suite ---


class Env:
    """Built once for the module: two cold builds and a warm one, containerd."""
    ready = False


def setUpModule():
    need_tools("gcc", "apt-get", "dpkg-deb", "skopeo", "containerd", "ctr", "runc")
    Env.bins = find_bins()
    Env.images = []
    Env.missing = {}
    for n in chosen_images():
        if n not in ALL:
            raise AssertionError(f"NODEIMAGE_TEST_IMAGES names an unknown image {n!r}")
        lack = [b for b in BIN_NEEDS.get(n, []) if not has_bin(Env.bins, b)]
        if lack:
            Env.missing[n] = f"image {n} needs {', '.join(lack)} in $NODEIMAGE_TEST_BINS " \
                             f"(now {Env.bins or 'unset, and no upstream build in the cache'})"
        else:
            Env.images.append(n)
    if CI and Env.missing:
        raise AssertionError("CI=true and " + "; ".join(Env.missing.values()))
    if any(n in Env.images for n in ("coredns", "weave-kube", "weave-npc")):
        need_tools("mmdebstrap")
    Env.tmp = tempfile.mkdtemp(prefix="nodeimage-test-images-")
    try:
        prepare()
    except BaseException:
        tearDownModule()  # unittest skips it when setUpModule fails
        raise


def prepare():
    Env.out1, Env.out2, Env.out3 = (os.path.join(Env.tmp, d) for d in ("a", "b", "warm"))
    Env.doc1, Env.t1 = build(Env.out1, Env.images, Env.bins, "--no-cache")
    Env.doc2, Env.t2 = build(Env.out2, Env.images, Env.bins, "--no-cache")
    Env.doc3, Env.t3 = build(Env.out3, Env.images, Env.bins)
    Env.ctd = Containerd(os.path.join(Env.tmp, "containerd"))
    Env.ready = True
    for i in Env.doc1["images"]:
        Env.ctd.ctr("images", "import", "--platform", "linux/" + ARCH, os.path.join(Env.out1, i["archive"]))


def tearDownModule():
    if getattr(Env, "ctd", None):
        Env.ctd.stop()
        Env.ctd = None
    if getattr(Env, "tmp", None):
        shutil.rmtree(Env.tmp, ignore_errors=True)
        Env.tmp = None


def need_image(name: str):
    if name not in chosen_images():
        # Left out on purpose (NODEIMAGE_TEST_IMAGES): a skip, under CI too.
        raise unittest.SkipTest(f"image {name} is not in NODEIMAGE_TEST_IMAGES")
    if name not in Env.images:
        missing(Env.missing[name])
    return by_name(Env.doc1)[name]


class Build(unittest.TestCase):
    def test_two_builds_give_identical_digests_and_bytes(self):
        a, b, w = by_name(Env.doc1), by_name(Env.doc2), by_name(Env.doc3)
        self.assertEqual(sorted(a), sorted(Env.images))
        for n in a:
            self.assertEqual(a[n]["digest"], b[n]["digest"], n)
            self.assertEqual(a[n]["digest"], w[n]["digest"], n)
            with open(os.path.join(Env.out1, a[n]["archive"]), "rb") as f1, \
                    open(os.path.join(Env.out2, b[n]["archive"]), "rb") as f2:
                self.assertTrue(f1.read() == f2.read(), f"{n}: archives differ")
        print(f"\n  cold builds {Env.t1:.1f} s and {Env.t2:.1f} s, warm {Env.t3:.1f} s", file=sys.stderr)

    def test_warm_build_is_fast(self):
        self.assertLess(Env.t3, 30.0, "a warm build (everything cached) took too long")

    def test_references_come_from_the_profile(self):
        import tomllib
        prof = os.path.join(REPO, "profiles", Env.doc1["profile"])
        with open(prof, "rb") as f:
            refs = {i["name"]: i["reference"] for i in tomllib.load(f)["image"]}
        for n, i in by_name(Env.doc1).items():
            self.assertEqual(i["reference"], refs.get(n, "nodeimage.test/workload:1"), n)


class References(unittest.TestCase):
    def test_registry_paths_follow_docker_normalisation(self):
        sys.path.insert(0, HERE)
        import ocilib
        cases = {
            "registry.k8s.io/pause:3.10.1": ("registry.k8s.io", "pause", "3.10.1"),
            "registry.k8s.io/coredns/coredns:v1.13.1": ("registry.k8s.io", "coredns/coredns", "v1.13.1"),
            "rajchaudhuri/weave-kube:2.9.0": ("docker.io", "rajchaudhuri/weave-kube", "2.9.0"),
            "busybox:1.36": ("docker.io", "library/busybox", "1.36"),
            "docker.io/busybox": ("docker.io", "library/busybox", "latest"),
            "index.docker.io/library/busybox:1": ("docker.io", "library/busybox", "1"),
            "nodeimage.test/workload:1": ("nodeimage.test", "workload", "1"),
            "127.0.0.1:5000/a/b:c": ("127.0.0.1:5000", "a/b", "c"),
            "localhost/x:1": ("localhost", "x", "1"),
        }
        for ref, want in cases.items():
            self.assertEqual(ocilib.parse_reference(ref), want, ref)


class Layout(unittest.TestCase):
    def test_skopeo_inspects_every_archive(self):
        for i in Env.doc1["images"]:
            path = os.path.join(Env.out1, i["archive"])
            info = json.loads(run(["skopeo", "inspect", f"oci-archive:{path}"]).stdout)
            self.assertEqual(info["Digest"], i["digest"], i["name"])
            self.assertEqual((info["Os"], info["Architecture"]), ("linux", ARCH))
            self.assertEqual(info["Created"], "2025-01-01T00:00:00Z")
            cfg = json.loads(run(["skopeo", "inspect", "--config", f"oci-archive:{path}:{i['reference']}"]).stdout)
            self.assertEqual(len(cfg["rootfs"]["diff_ids"]), len(info["Layers"]))
            self.assertTrue(cfg["config"]["Entrypoint"], i["name"])

    def test_archives_are_normalised(self):
        """Sorted members, one mtime, owner 0:0 in archives and layers; gzip without time."""
        for i in Env.doc1["images"]:
            path = os.path.join(Env.out1, i["archive"])
            with tarfile.open(path) as tf:
                members = tf.getmembers()
                names = [m.name for m in members]
                self.assertEqual(names[-2:], ["index.json", "oci-layout"])
                self.assertEqual(names[:-2], sorted(names[:-2]))
                for m in members:
                    self.assertEqual((m.mtime, m.uid, m.gid), (EPOCH, 0, 0), m.name)
                index = json.load(tf.extractfile("index.json"))
                (d,) = index["manifests"]
                self.assertEqual(d["annotations"]["io.containerd.image.name"], i["reference"])
                self.assertEqual(d["annotations"]["org.opencontainers.image.ref.name"], i["reference"])
                man = json.load(tf.extractfile("blobs/sha256/" + d["digest"].split(":")[1]))
                for layer in man["layers"]:
                    blob = tf.extractfile("blobs/sha256/" + layer["digest"].split(":")[1]).read()
                    self.assertEqual(blob[4:8], b"\0\0\0\0", "gzip header mtime")
                    import gzip
                    import io
                    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as lt:
                        for m in lt.getmembers():
                            self.assertEqual(m.mtime, EPOCH, m.name)


def children_of(pid: int) -> list[tuple[str, str]]:
    """(pid, state) of every process whose parent is `pid`."""
    out = []
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append((st.split("/")[2], fields[0]))
    return out


class Containers(unittest.TestCase):
    def test_import_names_and_digests(self):
        listed = {}
        for line in Env.ctd.ctr("images", "ls").stdout.splitlines()[1:]:
            w = line.split()
            listed[w[0]] = w[2]
        for i in Env.doc1["images"]:
            self.assertEqual(listed.get(i["reference"]), i["digest"], i["name"])

    def test_pause_runs_until_sigterm_and_exits_0(self):
        ref = need_image("pause")["reference"]
        v = Env.ctd.run(ref, "/pause", "-v")
        self.assertIn("pause version", v.stdout)
        cid = f"pause{os.getpid()}"
        p = Env.ctd.start(ref, cid)
        pid = Env.ctd.wait_running(cid)
        time.sleep(3)
        self.assertIsNone(p.poll(), "pause exited within 3 s")
        with open(f"/proc/{pid}/status") as f:
            uid = [l for l in f if l.startswith("Uid:")][0].split()[1]
        self.assertEqual(uid, "65535", "pause runs as the image's USER 65535")
        Env.ctd.ctr("tasks", "kill", "-s", "SIGTERM", cid)
        out, _ = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, out)
        self.assertIn("SIGTERM", out)

    def test_pause_reaps_zombies(self):
        """As PID 1 of a shared PID namespace pause reaps children that others leave."""
        ref = need_image("pause")["reference"]
        wref = need_image("workload")["reference"]
        cid = f"pausez{os.getpid()}"
        p = Env.ctd.start(ref, cid)
        pid = Env.ctd.wait_running(cid)
        try:
            # A shell in pause's PID namespace starts a child and exits at once: the
            # child is re-parented to pause, exits after 1 s, and must not stay a zombie.
            # A container in pause's PID namespace whose inner shell leaves an orphan
            # (sleep 2) behind; the outer shell keeps the container alive meanwhile.
            wid = f"orphans{os.getpid()}"
            w = Env.ctd.start(wref, wid, "sh", "-c", "sh -c 'sleep 2 &'; sleep 60",
                              opts=["--with-ns", f"pid:/proc/{pid}/ns/pid"])
            Env.ctd.wait_running(wid)
            deadline = time.monotonic() + 1.5
            while not children_of(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(children_of(pid), "the orphaned sleep was not re-parented to pause")
            time.sleep(3)
            self.assertEqual(children_of(pid), [], "pause did not reap its exited children")
        finally:
            Env.ctd.ctr("tasks", "kill", "-s", "SIGKILL", f"orphans{os.getpid()}", check=False)
            Env.ctd.ctr("tasks", "kill", "-s", "SIGTERM", cid, check=False)
            p.communicate(timeout=20)
            if "w" in locals():
                w.communicate(timeout=20)

    def test_workload_applets(self):
        ref = need_image("workload")["reference"]
        r = Env.ctd.run(ref, "sh", "-c",
                        "for a in sh nslookup wget httpd sleep; do echo $a=$(readlink /bin/$a); done; "
                        "echo ok >/www/index.html; httpd -p 127.0.0.1:8080 -h /www; "
                        "wget -qO- http://127.0.0.1:8080/index.html")
        for a in ("sh", "nslookup", "wget", "httpd", "sleep"):
            self.assertIn(f"{a}=busybox\n", r.stdout)
        self.assertTrue(r.stdout.strip().endswith("ok"), r.stdout)

    def test_coredns_version_and_file_capability(self):
        info = need_image("coredns")
        ref = info["reference"]
        v = Env.ctd.run(ref, "/coredns", "-version")
        self.assertIn("CoreDNS-", v.stdout)
        # The capability survived import: the unpacked snapshot's /coredns has it.
        found = []
        for p in glob.glob(os.path.join(Env.ctd.dir, "root", "io.containerd.snapshotter.v1.overlayfs",
                                        "snapshots", "*", "fs", "coredns")):
            found.append(os.getxattr(p, "security.capability"))
        self.assertIn(CAP_NET_BIND_SERVICE_EP, found)

    def test_coredns_binds_53_as_65532_and_answers(self):
        ref = need_image("coredns")["reference"]
        wref = need_image("workload")["reference"]
        conf = os.path.join(Env.tmp, "corefile")
        os.makedirs(conf, exist_ok=True)
        with open(os.path.join(conf, "Corefile"), "w") as f:
            f.write(".:53 {\n    hosts {\n        192.0.2.53 probe.nodeimage.test\n    }\n    errors\n}\n")
        cid = f"coredns{os.getpid()}"
        # As the kubeadm Deployment: every capability but NET_BIND_SERVICE dropped.
        drops = [f"--cap-drop={c}" for c in (
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_SYS_CHROOT", "CAP_KILL",
            "CAP_AUDIT_WRITE")]
        p = Env.ctd.start(ref, cid, "/coredns", "-conf", "/etc/coredns/Corefile", opts=[
            f"--mount=type=bind,src={conf},dst=/etc/coredns,options=rbind:ro", *drops])
        try:
            pid = Env.ctd.wait_running(cid)
            time.sleep(3)
            self.assertIsNone(p.poll(), "coredns exited")
            with open(f"/proc/{pid}/status") as f:
                st = dict(l.split(":", 1) for l in f if ":" in l)
            self.assertEqual(st["Uid"].split()[0], "65532")
            r = Env.ctd.run(wref, "nslookup", "probe.nodeimage.test", "127.0.0.1",
                            opts=["--with-ns", f"network:/proc/{pid}/ns/net"])
            self.assertIn("192.0.2.53", r.stdout)
        finally:
            Env.ctd.ctr("tasks", "kill", "-s", "SIGTERM", cid, check=False)
            out, _ = p.communicate(timeout=30)
        self.assertNotIn("permission denied", out)

    def test_weave_kube_binaries_run(self):
        ref = need_image("weave-kube")["reference"]
        r = Env.ctd.run(ref, "/home/weave/weaver", "--version")
        self.assertTrue(r.stdout.strip() or r.stderr.strip())
        for b in ("/usr/bin/weaveutil", "/home/weave/kube-utils"):
            r = Env.ctd.run(ref, "sh", "-c", f"{b} --help >/dev/null 2>&1; echo rc=$?")
            self.assertNotIn("rc=126", r.stdout, b)
            self.assertNotIn("rc=127", r.stdout, b)

    def test_weave_init_installs_cni(self):
        ref = need_image("weave-kube")["reference"]
        init_sh_installs_cni(self, ref, os.path.join(Env.tmp, "host-real"))

    def test_weave_npc_runs_and_finds_ulogd(self):
        ref = need_image("weave-npc")["reference"]
        r = Env.ctd.run(ref, "sh", "-c", "/usr/bin/weave-npc --help; echo rc=$?")
        self.assertNotIn("rc=126", r.stdout)
        self.assertNotIn("rc=127", r.stdout)
        ulogd_works(self, ref)


def init_sh_installs_cni(t: unittest.TestCase, ref: str, host: str):
    """init.sh in a privileged container (its own network namespace) with `host` as /host."""
    for d in ("opt", "etc", "home"):
        os.makedirs(os.path.join(host, d), exist_ok=True)
    r = Env.ctd.run(ref, "/home/weave/init.sh", opts=[
        "--privileged", f"--mount=type=bind,src={host},dst=/host,options=rbind:rw"])
    t.assertIn("CNI plugin", r.stderr + r.stdout)
    bindir = os.path.join(host, "opt", "cni", "bin")
    plugin = os.path.join(bindir, "weave-plugin-" + ref.rsplit(":", 1)[1])
    t.assertTrue(os.path.isfile(plugin), os.listdir(bindir))
    t.assertEqual(os.stat(plugin).st_mode & 0o777, 0o755)
    import hashlib
    with open(plugin, "rb") as f:
        installed = hashlib.sha256(f.read()).hexdigest()
    in_image = Env.ctd.run(ref, "sha256sum", "/usr/bin/weaveutil").stdout.split()[0]
    t.assertEqual(installed, in_image, "the plugin is a copy of /usr/bin/weaveutil")
    for link in ("weave-net", "weave-ipam"):
        t.assertEqual(os.readlink(os.path.join(bindir, link)), os.path.basename(plugin))
    with open(os.path.join(host, "etc", "cni", "net.d", "10-weave.conflist")) as f:
        conf = json.load(f)
    t.assertEqual(conf["name"], "weave")
    t.assertEqual([p["type"] for p in conf["plugins"]], ["weave-net", "portmap"])
    t.assertIs(conf["plugins"][0]["hairpinMode"], True)
    t.assertEqual(conf["cniVersion"], "1.0.0")
    # A second run (a restarted pod) changes nothing and succeeds.
    before = os.stat(os.path.join(host, "etc", "cni", "net.d", "10-weave.conflist")).st_mtime_ns
    Env.ctd.run(ref, "/home/weave/init.sh", opts=[
        "--privileged", f"--mount=type=bind,src={host},dst=/host,options=rbind:rw"])
    t.assertEqual(before, os.stat(os.path.join(host, "etc", "cni", "net.d", "10-weave.conflist")).st_mtime_ns)


def ulogd_works(t: unittest.TestCase, ref: str):
    """Every plugin /etc/ulogd.conf loads exists, and ulogd runs with that file (a
    privileged container: NFLOG needs CAP_NET_ADMIN) until stopped."""
    r = Env.ctd.run(ref, "sh", "-c",
                    "command -v ulogd; for p in $(sed -n 's/^plugin=\"\\(.*\\)\"$/\\1/p' /etc/ulogd.conf); "
                    "do test -f \"$p\" || { echo missing $p; exit 1; }; done; echo plugins-ok")
    t.assertIn("/usr/sbin/ulogd", r.stdout)
    t.assertIn("plugins-ok", r.stdout)
    r = Env.ctd.run(ref, "sh", "-c",
                    "mkfifo /var/log/ulogd.pcap; cat /var/log/ulogd.pcap >/dev/null & "
                    "timeout 3 /usr/sbin/ulogd -v; echo rc=$?", opts=["--privileged"])
    t.assertIn("rc=124", r.stdout, r.stdout + r.stderr)


STAND_INS = {
    "kube-utils": "#!/bin/sh\n[ $# -gt 0 ] || echo 192.0.2.1 192.0.2.2\n",
    "weaver": "#!/bin/sh\ncase \"$*\" in *--print-peer-name*) echo 7a:00:00:00:00:01; exit 0;; esac\n"
              "for a in \"$@\"; do echo \"arg:$a\"; done\n",
}


class WeaveScripts(unittest.TestCase):
    """The weave images' own scripts, with stand-in binaries when the real ones are
    missing (see the module docstring)."""

    @classmethod
    def setUpClass(cls):
        need_tools("mmdebstrap")
        if "weave-kube" in Env.images and "weave-npc" in Env.images:
            cls.kube = by_name(Env.doc1)["weave-kube"]["reference"]
            cls.npc = by_name(Env.doc1)["weave-npc"]["reference"]
            return
        stand = os.path.join(Env.tmp, "stand-in-bins")
        os.makedirs(stand, exist_ok=True)
        for b in ("weaveutil", "weave-npc"):
            shutil.copy("/bin/true", os.path.join(stand, b))
        # Stand-ins that show what launch.sh asks of them: kube-utils prints two peers,
        # weaver prints a peer name or the arguments it was started with.
        for b, text in STAND_INS.items():
            with open(os.path.join(stand, b), "w") as f:
                f.write(text)
            os.chmod(os.path.join(stand, b), 0o755)
        out = os.path.join(Env.tmp, "stand-in")
        doc, _ = build(out, ["weave-kube", "weave-npc"], stand, "--no-cache")
        for i in doc["images"]:
            Env.ctd.ctr("images", "import", "--platform", "linux/" + ARCH, os.path.join(out, i["archive"]))
        cls.kube = by_name(doc)["weave-kube"]["reference"]
        cls.npc = by_name(doc)["weave-npc"]["reference"]
        cls.stand_in = True

    def test_init_sh_installs_the_cni_plugin_and_conflist(self):
        init_sh_installs_cni(self, self.kube, os.path.join(Env.tmp, "host"))

    def test_launch_sh_starts_weaver_with_the_manifests_settings(self):
        if not hasattr(self, "stand_in"):
            self.skipTest("real Weave binaries in use: launch.sh needs an API server")
        env = {"HOSTNAME": "node-a", "INIT_CONTAINER": "true", "IPALLOC_RANGE": "10.40.0.0/16",
               "WEAVE_STATUS_ADDR": "0.0.0.0:6782", "WEAVE_PASSWORD": "secret",
               "EXTRA_ARGS": "--trusted-subnets=10.0.0.0/8,192.168.0.0/16"}
        opts = ["--privileged"] + [f"--env={k}={v}" for k, v in env.items()]
        r = Env.ctd.run(self.kube, "/home/weave/launch.sh", "--log-level=info", opts=opts)
        args = [l[4:] for l in r.stdout.splitlines() if l.startswith("arg:")]
        self.assertEqual(args, [
            "--trusted-subnets=10.0.0.0/8,192.168.0.0/16", "--port=6783", "--datapath=datapath",
            "--name=7a:00:00:00:00:01", "--http-addr=127.0.0.1:6784", "--metrics-addr=0.0.0.0:6782",
            "--status-addr=0.0.0.0:6782", "--docker-api=", "--no-dns", "--db-prefix=/weavedb/weave-net",
            "--nickname=node-a", "--ipalloc-range=10.40.0.0/16", "--ipalloc-init=consensus=2",
            "--conn-limit=200", "--expect-npc", "--no-masq-local", "--log-level=info",
            "192.0.2.1", "192.0.2.2"], r.stdout + r.stderr)

    def test_init_sh_fails_on_a_bad_backend(self):
        r = Env.ctd.run(self.kube, "/home/weave/init.sh", check=False, opts=[
            "--privileged", "--env", "IPTABLES_BACKEND=bogus"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("expected nft or legacy", r.stderr + r.stdout)

    def test_backend_links(self):
        r = Env.ctd.run(self.kube, "sh", "-c",
                        ". /usr/lib/weave-test/common.sh; choose_iptables_backend; "
                        "readlink /usr/local/sbin/iptables; iptables --version; "
                        "IPTABLES_BACKEND=legacy choose_iptables_backend; iptables --version",
                        opts=["--privileged"])
        self.assertIn("/usr/sbin/iptables-nft", r.stdout)
        self.assertIn("(nf_tables)", r.stdout)
        self.assertIn("(legacy)", r.stdout)

    def test_npc_launcher_makes_the_fifo_and_ulogd_works(self):
        r = Env.ctd.run(self.npc, "sh", "-c", "/usr/bin/launch.sh; test -p /var/log/ulogd.pcap && echo fifo-ok",
                        opts=["--privileged"])
        self.assertIn("fifo-ok", r.stdout, r.stderr)
        ulogd_works(self, self.npc)

    def test_scripts_are_shellcheck_clean(self):
        if not shutil.which("shellcheck"):
            missing("`shellcheck` is not installed (apt-get install shellcheck)")
        src = os.path.join(HERE, "src", "weave")
        run(["shellcheck", "-S", "warning", "-x", "init.sh", "launch.sh", "npc-launch.sh", "common.sh"], cwd=src)


class Push(unittest.TestCase):
    def test_push_to_a_registry_and_read_back(self):
        need_tools("docker-registry")
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        d = os.path.join(Env.tmp, "registry")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.yml"), "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n")
        reg = subprocess.Popen(["docker-registry", "serve", os.path.join(d, "config.yml")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            import urllib.request
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(url + "/v2/", timeout=2)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            run([sys.executable, BUILD, "--arch", ARCH, "--out", Env.out1, "--push-only", "--push", url])
            sys.path.insert(0, HERE)
            import ocilib
            for i in Env.doc1["images"]:
                _, repo, tag = ocilib.parse_reference(i["reference"])
                info = json.loads(run(["skopeo", "inspect", "--tls-verify=false",
                                       f"docker://127.0.0.1:{port}/{repo}:{tag}"]).stdout)
                self.assertEqual(info["Digest"], i["digest"], i["name"])
            # Pushing again uploads nothing new and succeeds.
            run([sys.executable, BUILD, "--arch", ARCH, "--out", Env.out1, "--push-only", "--push", url])
            lock_through_mirrors(self, url)
        finally:
            reg.terminate()
            reg.wait(10)


def lock_through_mirrors(t: unittest.TestCase, url: str):
    """`nodeimage lock` of a profile naming the images by their references (no digest:
    the published digests are upstream's, not these images'), with every registry
    mirrored to the test registry: each resolves to the digest that was built."""
    nodeimage = os.environ.get("NODEIMAGE_BIN") or next(
        (p for p in (os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target"), d, "nodeimage")
                     for d in ("release", "debug"))
         if os.path.isfile(p)), None)
    if not nodeimage:
        missing("the nodeimage binary is not built (cargo build --release -p nodeimage, or set NODEIMAGE_BIN)")
    import tomllib
    with open(os.path.join(REPO, "profiles", Env.doc1["profile"]), "rb") as f:
        prof = tomllib.load(f)
    d = os.path.join(Env.tmp, "lock")
    os.makedirs(d, exist_ok=True)
    text = ['name = "test-images-lock"', f'arch = "{prof["arch"]}"', '', '[debian]', 'suite = "bookworm"', '']
    for i in Env.doc1["images"]:
        text += ["[[image]]", f'name = "{i["name"]}"', f'reference = "{i["reference"]}"', '']
    path = os.path.join(d, "test-images-lock.toml")
    with open(path, "w") as f:
        f.write("\n".join(text))
    sys.path.insert(0, HERE)
    import ocilib
    mirrors = sorted({ocilib.parse_reference(i["reference"])[0] for i in Env.doc1["images"]})
    # The registry here is where these test images come from: trusting its tags is the point.
    cmd = [nodeimage, "lock", path, "--trust-mirror-tags"]
    for m in mirrors:
        cmd += ["--registry-mirror", f"{m}={url}"]
    run(cmd)
    with open(os.path.join(d, "test-images-lock.lock.json")) as f:
        lock = {i["name"]: i for i in json.load(f)["images"]}
    for i in Env.doc1["images"]:
        t.assertEqual(lock[i["name"]]["manifest"]["digest"], i["digest"], i["name"])


if __name__ == "__main__":
    unittest.main()
