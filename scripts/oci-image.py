#!/usr/bin/env python3
"""Writes a single-layer OCI image layout packed as one tar archive, without a container engine.

The archive is what `ctr -n k8s.io images import ARCHIVE`, `skopeo copy oci-archive:ARCHIVE ...` and
`podman load -i ARCHIVE` accept. Python 3 standard library only.

usage: oci-image.py --out ARCHIVE.tar --ref NAME:TAG
                    [--file SRC:DEST[:MODE]]... [--symlink LINK:TARGET]... [--dir DEST[:MODE]]...
                    [--entrypoint JSON-LIST] [--cmd JSON-LIST] [--user UID[:GID]] [--workdir DIR]
                    [--env K=V]... [--label K=V]... [--compress gzip|none]

  --file SRC:DEST[:MODE]  copy the regular file SRC (symlinks followed) to the absolute path DEST; MODE is
                          octal (default 0755 when SRC is executable by anyone, else 0644)
  --symlink LINK:TARGET   a symbolic link at the absolute path LINK pointing at TARGET (kept verbatim)
  --dir DEST[:MODE]       a directory (default mode 0755); parents of every entry are created with 0755
  --env K=V               config Env; PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                          is added unless given
  --compress gzip|none    layer compression (default gzip, level 6)

Reproducible bit for bit: entries sorted by path, mtime 0 (or $SOURCE_DATE_EPOCH), uid/gid 0, no user or
group names, GNU tar headers (no pax timestamps), gzip with mtime 0 and no file name, JSON with sorted
keys, config "created" fixed to the same time. index.json names the image by the annotations
io.containerd.image.name (the full ref) and org.opencontainers.image.ref.name (the tag).

The layer is produced twice - once to learn its digests and size, once straight into the archive - so no
temporary copy of large inputs (model files) is ever written. If an input changes between the two passes
the archive is removed and the run fails.

Prints the archive path and then the manifest digest (sha256:...) on stdout, one per line.
"""

import argparse
import datetime
import gzip
import hashlib
import json
import os
import re
import stat
import sys
import tarfile

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip", "none": "application/vnd.oci.image.layer.v1.tar"}
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COPY_BUF = 1 << 20


class UsageError(Exception):
    pass


def parse_mode(text, what):
    if not re.fullmatch(r"[0-7]{3,4}", text or ""):
        raise UsageError(f"{what}: bad MODE {text!r} (want octal such as 0644, 0755 or 1777)")
    return int(text, 8)


def parse_abs(path, what):
    if not path.startswith("/"):
        raise UsageError(f"{what}: {path!r} is not an absolute path")
    norm = os.path.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/":
        raise UsageError(f"{what}: {path!r} names the root directory")
    if any(part in ("..",) for part in path.split("/")):
        raise UsageError(f"{what}: {path!r} contains '..'")
    return norm.lstrip("/")


def parse_ref(ref):
    name, tag = ref, None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if "@" in ref:
        raise UsageError(f"--ref: {ref!r}: digests are not supported, give NAME:TAG")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
    if not tag:
        raise UsageError(f"--ref: {ref!r} has no tag (want NAME:TAG)")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise UsageError(f"--ref: bad tag {tag!r}")
    comp = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    parts = name.split("/")
    host = parts[0] if len(parts) > 1 and re.search(r"[.:]|^localhost$", parts[0]) else None
    repo_parts = parts[1:] if host else parts
    if host is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(?::[0-9]+)?", host):
        raise UsageError(f"--ref: bad registry host {host!r} in {ref!r}")
    if not repo_parts or not all(re.fullmatch(comp, p) for p in repo_parts):
        raise UsageError(f"--ref: bad repository name {name!r} (lowercase letters, digits, '.', '_', '-')")
    return ref, tag


def parse_json_list(text, what):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what}: not JSON ({e}): {text!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{what}: want a JSON list of strings, got {text!r}")
    return value


def parse_kv(text, what):
    if "=" not in text or text.startswith("="):
        raise UsageError(f"{what}: want K=V, got {text!r}")
    return text.split("=", 1)


class Tree:
    """The layer's entries by path (no leading slash)."""

    def __init__(self):
        self.entries = {}  # path -> dict(kind=file|dir|symlink, mode, src|target, size, implicit)

    def _parents(self, path, what):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            e = self.entries.get(p)
            if e is None:
                self.entries[p] = {"kind": "dir", "mode": 0o755, "implicit": True}
            elif e["kind"] != "dir":
                raise UsageError(f"{what}: parent /{p} is already a {e['kind']}")

    def _check_free(self, path, what):
        e = self.entries.get(path)
        if e is not None and not (e["kind"] == "dir" and e.get("implicit")):
            raise UsageError(f"{what}: /{path} given twice")
        if e is not None:  # an implicit parent directory: only --dir may claim it
            raise UsageError(f"{what}: /{path} is a parent directory of another entry")
        if any(k.startswith(path + "/") for k in self.entries):
            raise UsageError(f"{what}: /{path} is a parent directory of another entry")

    def add_file(self, spec):
        what = f"--file {spec}"
        parts = spec.split(":")
        mode = None
        if len(parts) >= 3 and not parts[-1].startswith("/"):
            mode = parse_mode(parts[-1], what)
            parts = parts[:-1]
        if len(parts) < 2 or not parts[0]:
            raise UsageError(f"{what}: want SRC:DEST[:MODE]")
        src, dest = ":".join(parts[:-1]), parts[-1]
        path = parse_abs(dest, what)
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise UsageError(f"{what}: SRC {src} does not exist") from None
        except OSError as e:
            raise UsageError(f"{what}: cannot stat SRC {src}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what}: SRC {src} is not a regular file")
        if not os.access(src, os.R_OK):
            raise UsageError(f"{what}: SRC {src} is not readable")
        if mode is None:
            mode = 0o755 if st.st_mode & 0o111 else 0o644
        self._check_free(path, what)
        self._parents(path, what)
        self.entries[path] = {"kind": "file", "mode": mode, "src": src, "size": st.st_size}

    def add_symlink(self, spec):
        what = f"--symlink {spec}"
        link, sep, target = spec.partition(":")
        if not sep or not link or not target:
            raise UsageError(f"{what}: want LINK:TARGET")
        path = parse_abs(link, what)
        self._check_free(path, what)
        self._parents(path, what)
        self.entries[path] = {"kind": "symlink", "mode": 0o777, "target": target}

    def add_dir(self, spec):
        what = f"--dir {spec}"
        dest, sep, mode_s = spec.partition(":")
        mode = parse_mode(mode_s, what) if sep else 0o755
        path = parse_abs(dest, what)
        e = self.entries.get(path)
        if e is not None and not (e["kind"] == "dir" and e.get("implicit")):
            raise UsageError(f"{what}: /{path} given twice")
        self._parents(path, what)
        self.entries[path] = {"kind": "dir", "mode": mode, "implicit": False}


class HashWriter:
    """A write-only file object that hashes and counts what passes through, optionally forwarding it."""

    def __init__(self, sink=None):
        self.sink = sink
        self.sha = hashlib.sha256()
        self.n = 0

    def write(self, b):
        self.sha.update(b)
        self.n += len(b)
        if self.sink is not None:
            self.sink.write(b)
        return len(b)

    def tell(self):
        return self.n

    def flush(self):
        pass

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


def write_layer(tree, mtime, compress, sink):
    """Writes the layer to sink; returns (diff_id, digest, size)."""
    outer = HashWriter(sink)
    gz = None
    if compress == "gzip":
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=outer, compresslevel=6, mtime=0)
        inner = HashWriter(gz)
    else:
        inner = outer
    tar = tarfile.TarFile(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT, copybufsize=COPY_BUF)
    for path in sorted(tree.entries):
        e = tree.entries[path]
        ti = tarfile.TarInfo(path)
        ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = mtime, e["mode"], 0, 0, "", ""
        if e["kind"] == "dir":
            ti.type = tarfile.DIRTYPE
            tar.addfile(ti)
        elif e["kind"] == "symlink":
            ti.type, ti.linkname = tarfile.SYMTYPE, e["target"]
            tar.addfile(ti)
        else:
            ti.type, ti.size = tarfile.REGTYPE, e["size"]
            with open(e["src"], "rb") as f:
                if os.fstat(f.fileno()).st_size != e["size"]:
                    raise RuntimeError(f"{e['src']} changed size while packing")
                tar.addfile(ti, f)
    tar.close()
    if gz is not None:
        gz.close()
    return inner.digest(), outer.digest(), outer.n


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def jdump(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ArchiveWriter:
    """Writes the outer (uncompressed) tar by hand so the layer can stream into it."""

    def __init__(self, f, mtime):
        self.f, self.mtime = f, mtime

    def _header(self, name, size, kind):
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = self.mtime, 0, 0, "", ""
        if kind == "dir":
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        else:
            ti.type, ti.mode, ti.size = tarfile.REGTYPE, 0o644, size
        self.f.write(ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size):
        rem = size % tarfile.BLOCKSIZE
        if rem:
            self.f.write(b"\0" * (tarfile.BLOCKSIZE - rem))

    def dir(self, name):
        self._header(name, 0, "dir")

    def file(self, name, data):
        self._header(name, len(data), "file")
        self.f.write(data)
        self._pad(len(data))

    def stream(self, name, size, produce):
        self._header(name, size, "file")
        result = produce(self.f)
        self._pad(size)
        return result

    def close(self):
        end = 2 * tarfile.BLOCKSIZE
        self.f.write(b"\0" * end)
        pos = self.f.tell()
        rem = pos % tarfile.RECORDSIZE
        if rem:
            self.f.write(b"\0" * (tarfile.RECORDSIZE - rem))


def main(argv):
    ap = argparse.ArgumentParser(
        prog="oci-image.py",
        description="Write a reproducible single-layer OCI image archive (oci-archive) without a container engine.",
    )
    ap.add_argument("--out", required=True, metavar="ARCHIVE.tar")
    ap.add_argument("--ref", required=True, metavar="NAME:TAG")
    ap.add_argument("--file", action="append", default=[], metavar="SRC:DEST[:MODE]")
    ap.add_argument("--symlink", action="append", default=[], metavar="LINK:TARGET")
    ap.add_argument("--dir", action="append", default=[], metavar="DEST[:MODE]")
    ap.add_argument("--entrypoint", metavar="JSON-LIST")
    ap.add_argument("--cmd", metavar="JSON-LIST")
    ap.add_argument("--user", metavar="UID[:GID]")
    ap.add_argument("--workdir", metavar="DIR")
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--label", action="append", default=[], metavar="K=V")
    ap.add_argument("--compress", choices=["gzip", "none"], default="gzip")
    args = ap.parse_args(argv)

    try:
        ref, tag = parse_ref(args.ref)
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "0") or "0"
        if not re.fullmatch(r"[0-9]+", epoch):
            raise UsageError(f"SOURCE_DATE_EPOCH: not a non-negative integer: {epoch!r}")
        mtime = int(epoch)
        created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

        tree = Tree()
        for d in args.dir:
            tree.add_dir(d)
        for f in args.file:
            tree.add_file(f)
        for s in args.symlink:
            tree.add_symlink(s)
        if not tree.entries:
            raise UsageError("nothing to pack: give at least one --file, --symlink or --dir")

        cfg = {}
        if args.user is not None:
            if not re.fullmatch(r"[0-9]+(:[0-9]+)?", args.user):
                raise UsageError(f"--user: want numeric UID[:GID], got {args.user!r}")
            cfg["User"] = args.user
        if args.entrypoint is not None:
            cfg["Entrypoint"] = parse_json_list(args.entrypoint, "--entrypoint")
        if args.cmd is not None:
            cfg["Cmd"] = parse_json_list(args.cmd, "--cmd")
        if args.workdir is not None:
            if not args.workdir.startswith("/"):
                raise UsageError(f"--workdir: {args.workdir!r} is not an absolute path")
            cfg["WorkingDir"] = args.workdir
        env = []
        for kv in args.env:
            parse_kv(kv, "--env")
            env.append(kv)
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, DEFAULT_PATH)
        cfg["Env"] = env
        labels = {}
        for kv in args.label:
            k, v = parse_kv(kv, "--label")
            labels[k] = v
        if labels:
            cfg["Labels"] = labels
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise UsageError(f"--out: directory {out_dir} does not exist")
    except UsageError as e:
        print(f"oci-image.py: error: {e}", file=sys.stderr)
        return 2

    # pass 1: digests and size of the layer, nothing written
    diff_id, layer_digest, layer_size = write_layer(tree, mtime, args.compress, None)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "scripts/oci-image.py"}],
    }
    config_digest, config_bytes = blob(jdump(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER[args.compress], "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_bytes = blob(jdump(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }

    blobs = {config_digest: config_bytes, manifest_digest: manifest_bytes}
    names = sorted([d.split(":", 1)[1] for d in blobs] + [layer_digest.split(":", 1)[1]])
    tmp = f"{args.out}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            w = ArchiveWriter(f, mtime)
            w.dir("blobs/")
            w.dir("blobs/sha256/")
            for hexd in names:
                d = "sha256:" + hexd
                if d in blobs:
                    w.file(f"blobs/sha256/{hexd}", blobs[d])
                else:  # pass 2: the layer straight into the archive
                    got = w.stream(
                        f"blobs/sha256/{hexd}", layer_size, lambda sink: write_layer(tree, mtime, args.compress, sink)
                    )
                    if got != (diff_id, layer_digest, layer_size):
                        raise RuntimeError("an input file changed while packing (layer digest differs between passes)")
            w.file("index.json", jdump(index))
            w.file("oci-layout", jdump({"imageLayoutVersion": "1.0.0"}))
            w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, (RuntimeError, OSError)):
            print(f"oci-image.py: error: {e}", file=sys.stderr)
            return 1
        raise
    print(args.out)
    print(manifest_digest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
