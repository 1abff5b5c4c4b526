"""Deterministic OCI image building and pushing, Python standard library only.

* Layers are tar files written from an in-memory list of entries: sorted by path,
  parents before children, every mtime the build epoch, PAX format (so file
  capabilities travel as `SCHILY.xattr.security.capability`), gzip with mtime 0 and
  no file name.
* An image is written as an OCI image layout in a tar (`oci-archive`): `oci-layout`,
  `index.json` (one manifest, annotated with `io.containerd.image.name` and
  `org.opencontainers.image.ref.name` = the full reference, as nodeimage's own pull
  writes them), `blobs/sha256/<hex>`.
* `push` uploads an archive's blobs and manifest to a registry over the distribution
  API (monolithic POST + PUT uploads, then PUT of the manifest by tag).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterable

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# What `setcap cap_net_bind_service=+ep FILE` stores in security.capability
# (struct vfs_cap_data, revision 2: magic_etc = VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
# permitted[0] = 1 << CAP_NET_BIND_SERVICE (10), everything else 0; little endian).
CAP_NET_BIND_SERVICE_EP = bytes.fromhex("0100000200040000000000000000000000000000")


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ layers ---


@dataclasses.dataclass
class Entry:
    """One member of a layer. `path` is relative (`home/weave/init.sh`)."""

    path: str
    kind: str  # file, dir, symlink, hardlink, fifo
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    linkname: str = ""
    xattrs: dict = dataclasses.field(default_factory=dict)


def norm(path: str) -> str:
    p = path.strip()
    while p.startswith("./"):
        p = p[2:]
    p = p.strip("/")
    parts = [c for c in p.split("/") if c not in ("", ".")]
    if any(c == ".." for c in parts):
        raise ValueError(f"path {path!r} leaves the layer")
    return "/".join(parts)


class Layer:
    """A layer under construction: path -> Entry (a later add replaces an earlier one)."""

    def __init__(self):
        self.entries: dict[str, Entry] = {}

    def add(self, e: Entry) -> None:
        e.path = norm(e.path)
        if not e.path:
            return
        self.entries[e.path] = e

    def dir(self, path, mode=0o755, uid=0, gid=0):
        self.add(Entry(path, "dir", mode, uid, gid))

    def file(self, path, data: bytes, mode=0o644, uid=0, gid=0, xattrs=None):
        self.add(Entry(path, "file", mode, uid, gid, data=data, xattrs=dict(xattrs or {})))

    def file_from(self, path, src: str, mode=None, **kw):
        with open(src, "rb") as f:
            data = f.read()
        if mode is None:
            mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
        self.file(path, data, mode, **kw)

    def symlink(self, path, target: str):
        self.add(Entry(path, "symlink", 0o777, linkname=target))

    def fifo(self, path, mode=0o600):
        self.add(Entry(path, "fifo", mode))

    def has(self, path: str) -> bool:
        return norm(path) in self.entries

    def _complete(self) -> list[Entry]:
        """Entries sorted by path with every missing parent directory added."""
        entries = dict(self.entries)
        for p in list(entries):
            parts = p.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in entries:
                    entries[parent] = Entry(parent, "dir", 0o755)
        # Sorting by the tuple of components puts every directory right before its own
        # children (a plain string sort would put `a-b` between `a` and `a/b`; both
        # are valid, this is merely tidier).
        ordered = [entries[k] for k in sorted(entries, key=lambda k: k.split("/"))]
        # A hard link must follow the file it names: make the first member of each
        # link group (in output order) the regular file.
        first_of: dict[str, str] = {}
        by_path = {e.path: e for e in ordered}
        for e in ordered:
            if e.kind != "hardlink":
                continue
            target = norm(e.linkname)
            root = first_of.get(target)
            if root is None:
                t = by_path.get(target)
                if t is None or t.kind != "file":
                    raise ValueError(f"hard link {e.path} -> {e.linkname}: no such file in the layer")
                # Is the target already written (sorted before e)?
                if t.path.split("/") < e.path.split("/"):
                    first_of[target] = target
                    e.linkname = target
                else:
                    # e comes first: it takes the data, the target becomes a link to e.
                    e.kind, e.data, e.mode, e.uid, e.gid, e.xattrs = (
                        "file", t.data, t.mode, t.uid, t.gid, dict(t.xattrs))
                    e.linkname = ""
                    t.kind, t.data, t.linkname, t.xattrs = "hardlink", b"", e.path, {}
                    first_of[target] = e.path
            else:
                e.linkname = root
        return ordered

    def write(self, out_path: str, epoch: int) -> dict:
        """Writes the gzipped layer; returns {digest, diff_id, size}."""
        diff = hashlib.sha256()
        comp = hashlib.sha256()
        size = 0

        class Tee(io.RawIOBase):
            def __init__(self, f):
                self.f = f

            def writable(self):
                return True

            def write(self, b):
                nonlocal size
                comp.update(b)
                size += len(b)
                return self.f.write(b)

        class DiffTee(io.RawIOBase):
            def __init__(self, gz):
                self.gz = gz

            def writable(self):
                return True

            def write(self, b):
                diff.update(b)
                return self.gz.write(b)

        tmp = out_path + ".tmp"
        with open(tmp, "wb") as raw:
            tee = Tee(raw)
            # filename="" and mtime=0: the gzip header names no file and no time.
            with gzip.GzipFile(filename="", mode="wb", fileobj=tee, mtime=0, compresslevel=6) as gz:
                dt = DiffTee(gz)
                with tarfile.open(fileobj=dt, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                    for e in self._complete():
                        ti = tarfile.TarInfo(e.path)
                        ti.mtime = epoch
                        ti.uid, ti.gid = e.uid, e.gid
                        ti.uname = ti.gname = ""
                        ti.mode = e.mode & 0o7777
                        data = None
                        if e.kind == "file":
                            ti.type = tarfile.REGTYPE
                            ti.size = len(e.data)
                            data = io.BytesIO(e.data)
                        elif e.kind == "dir":
                            ti.type = tarfile.DIRTYPE
                        elif e.kind == "symlink":
                            ti.type = tarfile.SYMTYPE
                            ti.linkname = e.linkname
                        elif e.kind == "hardlink":
                            ti.type = tarfile.LNKTYPE
                            ti.linkname = e.linkname
                        elif e.kind == "fifo":
                            ti.type = tarfile.FIFOTYPE
                        else:
                            raise ValueError(f"{e.path}: unknown kind {e.kind}")
                        if e.xattrs:
                            # Values are raw bytes; surrogateescape keeps them byte-exact
                            # (tarfile encodes them back the same way).
                            ti.pax_headers = {
                                f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                for k, v in sorted(e.xattrs.items())
                            }
                        tf.addfile(ti, data)
        os.replace(tmp, out_path)
        return {"digest": "sha256:" + comp.hexdigest(), "diff_id": "sha256:" + diff.hexdigest(), "size": size}


# Paths dropped when a Debian root file system becomes a layer: documentation (the
# copyright files stay), caches, logs and what the runtime provides (/dev, /proc, ...).
DROP_PREFIXES = (
    "usr/share/man/", "usr/share/info/", "usr/share/lintian/", "usr/share/linda/",
    "var/cache/apt/", "var/lib/apt/lists/", "var/cache/debconf/", "var/log/",
    "var/cache/ldconfig/aux-cache",
)
KEEP_EMPTY_DIRS = ("var/cache/apt", "var/lib/apt/lists", "var/cache/debconf", "var/log")


def _dropped(p: str) -> bool:
    if p.startswith("dev/") or p.startswith("proc/") or p.startswith("sys/"):
        return True
    if p.startswith("usr/share/doc/"):
        rest = p[len("usr/share/doc/"):]
        # keep usr/share/doc/<pkg> and usr/share/doc/<pkg>/copyright
        return not ("/" not in rest or rest.endswith("/copyright") and rest.count("/") == 1)
    if p.startswith("usr/share/locale/"):
        return p != "usr/share/locale/locale.alias"
    if p.endswith("-old") and (p.startswith("var/lib/dpkg/") or p.startswith("var/cache/debconf/")):
        return True
    return any(p.startswith(d) for d in DROP_PREFIXES)


def layer_from_rootfs_tar(path: str) -> Layer:
    """Reads a root file system tarball (mmdebstrap's) into a Layer, dropping the
    paths in DROP_PREFIXES and device nodes; owners, modes, links and
    security.capability xattrs are kept, times are not."""
    layer = Layer()
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            p = norm(m.name)
            if not p or _dropped(p):
                continue
            xattrs = {}
            for k, v in (m.pax_headers or {}).items():
                if k == "SCHILY.xattr.security.capability":
                    xattrs["security.capability"] = v.encode("utf-8", "surrogateescape")
            if m.isdir():
                layer.add(Entry(p, "dir", m.mode, m.uid, m.gid))
            elif m.isreg():
                data = tf.extractfile(m).read()
                layer.add(Entry(p, "file", m.mode, m.uid, m.gid, data=data, xattrs=xattrs))
            elif m.issym():
                layer.add(Entry(p, "symlink", 0o777, m.uid, m.gid, linkname=m.linkname))
            elif m.islnk():
                layer.add(Entry(p, "hardlink", m.mode, m.uid, m.gid, linkname=norm(m.linkname)))
            elif m.isfifo():
                layer.add(Entry(p, "fifo", m.mode, m.uid, m.gid))
            # character and block devices: the runtime makes /dev
    for d in KEEP_EMPTY_DIRS + ("dev", "proc", "sys"):
        if not layer.has(d):
            layer.dir(d)
    # Hard links whose target was dropped become copies of nothing: drop them too.
    for p, e in list(layer.entries.items()):
        if e.kind == "hardlink" and e.linkname not in layer.entries:
            del layer.entries[p]
    return layer


# ------------------------------------------------------------------- images ---


OCI_ARCH = {"amd64": ("amd64", None), "arm64": ("arm64", "v8")}


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def write_image(out_path: str, reference: str, arch: str, epoch: int, layers: list[tuple[str, dict]],
                config: dict, history: list[str]) -> dict:
    """Writes an oci-archive. `layers` are (gz file, {digest, diff_id, size}) in order;
    `config` the image's runtime config (Entrypoint, Env, User, ...). Returns the
    manifest descriptor and friends."""
    architecture, variant = OCI_ARCH[arch]
    created = rfc3339(epoch)
    cfg = {
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [m["diff_id"] for _, m in layers]},
        "history": [{"created": created, "created_by": h} for h in history],
    }
    if variant:
        cfg["variant"] = variant
    cfg_bytes = canonical_json(cfg)
    cfg_desc = {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(cfg_bytes).hexdigest(),
                "size": len(cfg_bytes)}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": cfg_desc,
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": m["digest"], "size": m["size"]} for _, m in layers],
    }
    man_bytes = canonical_json(manifest)
    man_digest = "sha256:" + hashlib.sha256(man_bytes).hexdigest()
    platform = {"architecture": architecture, "os": "linux"}
    if variant:
        platform["variant"] = variant
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": man_digest,
            "size": len(man_bytes),
            "platform": platform,
            "annotations": {ANNOTATION_CONTAINERD_NAME: reference, ANNOTATION_REF_NAME: reference},
        }],
    }
    blobs: dict[str, tuple[str, bytes | None]] = {}
    for path, m in layers:
        blobs[m["digest"]] = (path, None)
    blobs[cfg_desc["digest"]] = ("", cfg_bytes)
    blobs[man_digest] = ("", man_bytes)

    def member(tf, name, size, fileobj, mode=0o644, kind=tarfile.REGTYPE):
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = epoch, 0, 0, "", ""
        ti.mode, ti.type, ti.size = mode, kind, size
        tf.addfile(ti, fileobj)

    tmp = out_path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        member(tf, "blobs", 0, None, 0o755, tarfile.DIRTYPE)
        member(tf, "blobs/sha256", 0, None, 0o755, tarfile.DIRTYPE)
        for d in sorted(blobs):
            path, data = blobs[d]
            name = "blobs/sha256/" + d.split(":", 1)[1]
            if data is None:
                with open(path, "rb") as f:
                    member(tf, name, os.fstat(f.fileno()).st_size, f)
            else:
                member(tf, name, len(data), io.BytesIO(data))
        idx = canonical_json(index)
        member(tf, "index.json", len(idx), io.BytesIO(idx))
        lay = canonical_json({"imageLayoutVersion": "1.0.0"})
        member(tf, "oci-layout", len(lay), io.BytesIO(lay))
    os.replace(tmp, out_path)
    return {
        "reference": reference,
        "digest": man_digest,
        "manifest_size": len(man_bytes),
        "config_digest": cfg_desc["digest"],
        "layers": [m["digest"] for _, m in layers],
        "size": sum(m["size"] for _, m in layers) + len(cfg_bytes) + len(man_bytes),
    }


# -------------------------------------------------------------- references ---


def parse_reference(ref: str) -> tuple[str, str, str]:
    """`registry.k8s.io/coredns/coredns:v1.13.1` -> (registry, repository, tag), with
    Docker's normalisation (no registry -> docker.io; a one-component Docker Hub name
    -> library/NAME), the rule nodeimage's reference.rs applies."""
    name, _, digest = ref.partition("@")
    if digest:
        raise ValueError(f"{ref}: a test image is named by tag, not digest")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = "latest"
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, rest
    else:
        registry, repo = "docker.io", name
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = "docker.io"
    if registry == "docker.io" and "/" not in repo:
        repo = "library/" + repo
    return registry, repo, tag


# -------------------------------------------------------------------- push ---


class RegistryError(Exception):
    pass


def _request(method, url, data=None, headers=None, ok=(200,)):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        resp = urllib.request.urlopen(req, timeout=120)
    except urllib.error.HTTPError as e:
        if e.code in ok:
            return e
        body = e.read()[:500].decode("utf-8", "replace")
        raise RegistryError(f"{method} {url}: HTTP {e.code}: {body}") from None
    except urllib.error.URLError as e:
        raise RegistryError(f"{method} {url}: {e.reason}") from None
    if resp.status not in ok:
        raise RegistryError(f"{method} {url}: HTTP {resp.status}, expected {ok}")
    return resp


def read_archive(path: str) -> tuple[dict, dict[str, bytes | tuple[int, int]]]:
    """index.json and the blob table ({digest: (offset, size)}) of an oci-archive."""
    blobs = {}
    index = None
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            n = norm(m.name)
            if n == "index.json":
                index = json.load(tf.extractfile(m))
            elif n.startswith("blobs/sha256/") and m.isreg():
                blobs["sha256:" + n.rsplit("/", 1)[1]] = (m.offset_data, m.size)
    if index is None:
        raise ValueError(f"{path}: no index.json")
    return index, blobs


def push(archive: str, base_url: str, log=print) -> str:
    """Pushes the one image of `archive` to `base_url` (`http://127.0.0.1:5000`) under
    the repository and tag of its io.containerd.image.name. Returns the manifest digest
    the registry reports."""
    index, blobs = read_archive(archive)
    (desc,) = index["manifests"]
    ref = desc["annotations"][ANNOTATION_CONTAINERD_NAME]
    _, repo, tag = parse_reference(ref)
    base = base_url.rstrip("/")

    def blob(d):
        off, size = blobs[d]
        with open(archive, "rb") as f:
            f.seek(off)
            data = f.read(size)
        if "sha256:" + hashlib.sha256(data).hexdigest() != d:
            raise ValueError(f"{archive}: blob {d} does not match its digest")
        return data

    manifest_bytes = blob(desc["digest"])
    manifest = json.loads(manifest_bytes)
    for d in [manifest["config"]["digest"]] + [l["digest"] for l in manifest["layers"]]:
        head = _request("HEAD", f"{base}/v2/{repo}/blobs/{d}", ok=(200, 404))
        if head.status == 200:
            continue
        resp = _request("POST", f"{base}/v2/{repo}/blobs/uploads/", data=b"",
                        headers={"Content-Length": "0"}, ok=(202,))
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{base}: upload for {repo} answered 202 without a Location")
        loc = urllib.parse.urljoin(base + "/", loc)
        loc += ("&" if "?" in loc else "?") + "digest=" + urllib.parse.quote(d)
        data = blob(d)
        _request("PUT", loc, data=data, headers={"Content-Type": "application/octet-stream",
                                                 "Content-Length": str(len(data))}, ok=(201,))
    resp = _request("PUT", f"{base}/v2/{repo}/manifests/{tag}", data=manifest_bytes,
                    headers={"Content-Type": desc["mediaType"]}, ok=(201,))
    got = resp.headers.get("Docker-Content-Digest", desc["digest"])
    if got != desc["digest"]:
        raise RegistryError(f"{base}: {repo}:{tag} stored as {got}, pushed {desc['digest']}")
    log(f"pushed {ref} -> {base}/v2/{repo}/manifests/{tag} ({got})")
    return got
